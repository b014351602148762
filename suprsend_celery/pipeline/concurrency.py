"""How many bulk requests a flusher keeps in flight: a limit that finds the API's speed.

TCP Vegas' idea in the shape of Netflix's concurrency-limits, measured on our own
samples (one per settled claim: how long its request took, and whether the API refused
it):

- **a queue estimate.** ``queue = limit * (1 - 1.2 * min_rtt / rtt)``: how many of our
  requests wait in the API's queue rather than being worked on. ``rtt`` is the latency
  averaged over about one round trip's answers, ``min_rtt`` its lowest in the last half
  minute (the API's own latency); latency within ``TOLERANCE`` (20%) of it is jitter,
  not a queue.
- **latency at its floor: grow.** While the queue stays under ``alpha`` (3 for a limit
  up to 10, 5.4 for 64) the limit grows: by one per answer in slow start (it doubles
  each round trip) until the first sign of a queue or refusal, then by ``beta`` (twice
  ``alpha``) per round trip while there is no queue at all, else by one.
- **latency climbing: shrink.** Over ``beta``, it shrinks by half the excess each round
  trip, so it settles a few requests above the API's capacity (its throughput times its
  latency), where every request is worked on at once and throughput is the capacity.
- **refused: back off.** A 429, a 5xx or no answer (a timeout, a reset) cuts the limit
  to ``BACKOFF`` of itself, once for all the requests sent before the cut; the limit it
  was cut at is remembered, and growing past it again takes ``PROBE_SAMPLES`` answers
  per request, so a server that refuses beyond N requests in flight sees about one
  refusal in 50, not one per round trip.
- **app-limited: hold.** A sample taken with less than half the window in use (the
  buffer ran dry) says nothing about more, so it does not grow the limit.

``Retry-After`` and the circuit breaker stay above all this: the flusher's claims stop
while the breaker is open, whatever the limit says. A 429 *without* ``Retry-After`` is
the API asking for fewer requests at once, which the limit gives it, so the breaker
does not count it as a failure (``ClaimOutcome.throttled``) unless the limit is already
at its floor; 5xx and unanswered requests count for both.

The limit belongs to the buffer, not to one flusher: ``SharedConcurrency`` merges what
each flusher learned into one figure in Redis (``buffer.concurrency_limit``) twenty
times a second, and gives each flusher its share of it, so N workers together keep about
``limit`` requests in flight and do not overrun the API. ``FixedConcurrency`` is the
same interface with adaptation off (``suprsend_flush_concurrency_adaptive``).

``GradientLimit`` is pure (time is passed in): the tests drive it against model servers
without I/O.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import redis

from .. import defaults
from ..buffer.concurrency_limit import SharedReading
from ..delivery.decisions import ClaimOutcome

__all__ = [
    "BACKOFF",
    "ConcurrencyLimit",
    "FixedConcurrency",
    "GradientLimit",
    "LimitStore",
    "Sample",
    "SharedConcurrency",
    "sample_of",
    "share_of",
]

logger = logging.getLogger(__name__)

BACKOFF = 0.75
"""What a refusal (429, 5xx, no answer) leaves of the limit, once per round trip."""

PROBE_SAMPLES = 50
"""Answers it takes to grow by one request near a limit that was refused before: a
server that refuses beyond N requests in flight then sees about one refusal in 50."""

TOLERANCE = 0.2
"""Latency up to this share above its floor reads as no queue at all: a network's jitter
and a busy host's scheduling, which more requests in flight would not make worse."""

MIN_RTT_WINDOW = 30.0
"""Seconds ``min_rtt`` remembers the fastest answer; then it is measured anew, so an API
that became slower for good is not mistaken for one with a queue forever."""

Signal = Literal["ok", "drop"]
"""A sample's verdict: answered (``ok``), or refused / unanswered (``drop``)."""

#: Statuses of a whole request that mean "too much": the API is limiting or failing.
_DROP_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Sample:
    """One settled claim, as the limit sees it."""

    rtt: float
    signal: Signal
    #: When its first request was sent (``time.monotonic``; 0: not known).
    sent: float = 0.0


def sample_of(outcome: ClaimOutcome) -> Sample | None:
    """The sample a claim's requests give, or None when they say nothing about load
    (no request made, credentials refused, a wrong URL)."""
    if outcome.requests == 0 or outcome.auth_error is not None:
        return None
    rtt = outcome.seconds / outcome.requests
    error = outcome.request_error
    if error is None:
        return Sample(rtt, "ok", outcome.started)
    if error.status_code is None or error.status_code in _DROP_STATUS or error.status_code >= 500:
        return Sample(rtt, "drop", outcome.started)
    return Sample(rtt, "ok", outcome.started)


class GradientLimit:
    """The limit of requests in flight, from samples (pure: the caller passes the time)."""

    def __init__(
        self,
        start: float,
        floor: float = defaults.FLUSH_CONCURRENCY_FLOOR,
        ceiling: float = defaults.FLUSH_CONCURRENCY_MAX,
    ) -> None:
        self.floor = float(max(1.0, floor))
        self.ceiling = float(max(self.floor, ceiling))
        self.limit = min(self.ceiling, max(self.floor, float(start)))
        #: Doubling each round trip until the first queue or refusal.
        self.slow_start = True
        #: The limit the latest refusal cut (growing past it goes ``SLOW_PROBE`` slow).
        self.refused_at: float | None = None
        self._min_rtt = math.inf
        self._next_min_rtt = math.inf
        self._min_rtt_until = -math.inf
        self._cut_at = -math.inf
        self._srtt = 0.0

    @property
    def min_rtt(self) -> float:
        """The lowest average latency lately: the API's own, with no queue (inf: none yet)."""
        return self._min_rtt

    @property
    def rtt(self) -> float:
        """The latency averaged over about the last round trip's answers (0: none yet)."""
        return self._srtt

    def set_limit(self, limit: float) -> None:
        """Take a limit learned elsewhere (the shared one), within floor and ceiling."""
        self.limit = min(self.ceiling, max(self.floor, float(limit)))

    def sample(
        self,
        rtt: float,
        signal: Signal,
        *,
        now: float,
        limited: bool = False,
        sent: float | None = None,
    ) -> None:
        """Learn from one answer (``limited``: taken with under half the window in use;
        ``sent``: when its request went out, else ``now - rtt``)."""
        if signal == "drop":
            self._refused(now - rtt if sent is None else sent, now)
            return
        if rtt <= 0:
            return
        self._note_rtt(rtt, now)
        if limited:
            return
        limit = self.limit
        queue = limit * (1.0 - self._min_rtt * (1.0 + TOLERANCE) / self._srtt)
        log = math.log10(max(limit, 10.0))
        alpha, beta = 3.0 * log, 6.0 * log
        if queue > beta:
            self.slow_start = False
            # Half the excess per round trip (``limit`` samples arrive per round trip).
            self._set(limit - max(1.0, (queue - beta) / 2.0) / limit)
            return
        if queue >= alpha:
            self.slow_start = False
            return
        refused = self.refused_at
        if refused is not None and limit >= refused - 1.0:
            if limit >= refused + 2.0:
                self.refused_at = None  # probed well past it: the API takes more now
            self._set(limit + 1.0 / PROBE_SAMPLES)
            return
        if self.slow_start:
            grown = limit + 1.0
        elif queue <= 1.0:
            grown = limit + beta / limit
        else:
            grown = limit + 1.0 / limit
        self._set(grown if refused is None else min(grown, refused - 1.0))

    def cap(self, limit: float) -> float:
        """How far growth from ``limit`` may go in one step: up to one below the limit
        that was refused, or anywhere when none was (or when already probing past it)."""
        refused = self.refused_at
        if refused is None or limit >= refused - 1.0:
            return math.inf
        return refused - 1.0

    def heard_refusal(self, limit: float | None) -> None:
        """Where the API refused, as the flushers sharing this limit know it (None:
        nowhere lately): grow past it as carefully as if this one had been refused."""
        self.refused_at = limit
        if limit is not None:
            self.slow_start = False

    def _refused(self, sent: float, now: float) -> None:
        self.slow_start = False
        if sent < self._cut_at:
            return  # sent before the last cut: the same congestion, one cut is enough
        # Windows are whole requests: at 11.9, 11 in flight were refused.
        self.refused_at = float(max(1, math.floor(self.limit)))
        self._set(self.limit * BACKOFF)
        self._cut_at = now

    def _note_rtt(self, rtt: float, now: float) -> None:
        # The latency averaged over about one round trip's answers (``limit`` of them),
        # so a network's jitter is not read as a queue ...
        gain = 1.0 / max(4.0, self.limit)
        srtt = rtt if not self._srtt else self._srtt + gain * (rtt - self._srtt)
        self._srtt = srtt
        # ... and its windowed minimum: the current one, and the one being measured for
        # the next window, which takes over when the current one expires.
        self._next_min_rtt = min(self._next_min_rtt, srtt)
        if now >= self._min_rtt_until:
            self._min_rtt, self._next_min_rtt = self._next_min_rtt, srtt
            self._min_rtt_until = now + MIN_RTT_WINDOW
        else:
            self._min_rtt = min(self._min_rtt, srtt)

    def _set(self, limit: float) -> None:
        self.limit = min(self.ceiling, max(self.floor, limit))


def share_of(limit: float, flushers: int, rank: int) -> int:
    """One flusher's window of a shared ``limit``: equal shares, the remainder to the
    first ranks, at least one request each."""
    total = max(1, int(limit))
    flushers = max(1, flushers)
    base, extra = divmod(total, flushers)
    return max(1, base + (1 if 0 <= rank < extra else 0))


# -- the flusher's side --------------------------------------------------------------


class ConcurrencyLimit(Protocol):
    """What the flusher asks: how many claims it may have in flight, and what it learned."""

    ceiling: int

    def window(self) -> int:
        """Claims this flusher may have in flight now."""

    def observe(self, outcome: ClaimOutcome, in_flight: int) -> None:
        """One claim whose requests ended, before its settle (``in_flight``: this
        flusher's claims out, this one included). An adaptive limit marks a 429 it
        answers by slowing down ``throttled``, so the breaker does not count it too."""

    def leave(self) -> None:
        """The run ended: stop counting this flusher in the shared limit."""


class FixedConcurrency:
    """Adaptation off: always ``concurrency`` requests in flight per flusher."""

    def __init__(self, concurrency: int) -> None:
        self.ceiling = max(1, concurrency)

    def window(self) -> int:
        return self.ceiling

    def observe(self, outcome: ClaimOutcome, in_flight: int) -> None:
        """Nothing to learn."""

    def leave(self) -> None:
        """Nothing to say."""


class LimitStore(Protocol):
    """Where the shared limit is kept (``buffer.concurrency_limit.SharedLimit``)."""

    def merge(
        self,
        flusher: str,
        delta: float,
        *,
        refused: float | None = None,
        start: float,
        floor: float,
        ceiling: float,
        leaving: bool = False,
    ) -> SharedReading:
        """Add ``delta`` to the shared limit (``start`` if there is none), clamped; note
        where the API refused (0: nowhere any more; None: no news) and this flusher as
        active (or gone); return the limit, the refused one and this flusher's place."""


class SharedConcurrency:
    """A flusher's ``GradientLimit``, merged into the buffer's shared one.

    Samples move the local limit at once (a refusal cuts this flusher's window before
    its next claim); every ``CONCURRENCY_SYNC_SECONDS`` (sooner after a cut) the change
    since the last merge is added to the shared limit in Redis and the merged value
    comes back, with this flusher's share of it. If Redis fails, the local limit goes
    on alone.
    """

    def __init__(
        self,
        store: LimitStore,
        start: int,
        ceiling: int,
        *,
        floor: int = defaults.FLUSH_CONCURRENCY_FLOOR,
        sync_seconds: float = defaults.CONCURRENCY_SYNC_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ceiling = max(1, ceiling)
        self.start = max(1, min(start, self.ceiling))
        self.gradient = GradientLimit(self.start, floor, self.ceiling)
        self.sync_seconds = sync_seconds
        self.clock = clock
        self.id = uuid.uuid4().hex[:12]
        #: This flusher's own change to the limit since the last merge.
        self._news = 0.0
        #: The refused limit as the last merge left it.
        self._refused: float | None = None
        self._reading = SharedReading(self.gradient.limit, 1, 0)
        self._next_sync = -math.inf

    @property
    def limit(self) -> float:
        """The buffer's limit as this flusher knows it (merged plus its own news)."""
        return self.gradient.limit

    def window(self) -> int:
        now = self.clock()
        if now >= self._next_sync:
            self._sync(now)
        reading = self._reading
        return share_of(self.gradient.limit, reading.flushers, reading.rank)

    def observe(self, outcome: ClaimOutcome, in_flight: int) -> None:
        sample = sample_of(outcome)
        if sample is None:
            return
        gradient, reading = self.gradient, self._reading
        before = gradient.limit
        error = outcome.request_error
        if (
            error is not None
            and error.status_code == 429
            and not error.retry_after
            and before > gradient.floor
        ):
            # The limit slows down for it; at its floor, the breaker takes over.
            outcome.throttled = True
        share = share_of(before, reading.flushers, reading.rank)
        now = self.clock()
        gradient.sample(
            sample.rtt,
            sample.signal,
            now=now,
            limited=in_flight * 2 < share,
            sent=sample.sent or None,
        )
        change = gradient.limit - before
        if change > 0 and reading.flushers > 1:
            # This flusher sees 1/n of the answers, and the others are growing the limit
            # alike: its view of the total grows n times its own news, no further than
            # one below a refused limit; its own share of that growth is its news.
            flushers = reading.flushers
            gradient.set_limit(min(before + change * flushers, gradient.cap(before)))
            change = (gradient.limit - before) / flushers
        self._news += change
        if gradient.limit < before * 0.9:
            self._next_sync = now  # a cut: tell the others at the next window
        elif self._next_sync == -math.inf:
            self._next_sync = now + self.sync_seconds

    def leave(self) -> None:
        self._sync(self.clock(), leaving=True)

    def _sync(self, now: float, *, leaving: bool = False) -> None:
        delta = self._news
        refused = self.gradient.refused_at
        news = None if refused == self._refused else (refused or 0.0)
        try:
            reading = self.store.merge(
                self.id,
                delta,
                refused=news,
                start=self.start,
                floor=self.gradient.floor,
                ceiling=self.ceiling,
                leaving=leaving,
            )
        except redis.RedisError as exc:
            # The claims will fail as well if Redis is gone; until then, go on alone.
            logger.warning("could not merge the shared concurrency limit: %s", exc)
            self._next_sync = now + self.sync_seconds
            return
        self._reading = reading
        # Where the API refused is the API's, not this flusher's: take the shared one.
        self.gradient.heard_refusal(reading.refused)
        self._refused = reading.refused
        self.gradient.set_limit(reading.limit)
        self._news = 0.0
        self._next_sync = now + self.sync_seconds
