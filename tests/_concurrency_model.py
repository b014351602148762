"""Model servers and a discrete-event run of flushers against them, for the adaptive
concurrency's unit tests: no I/O, no threads, simulated time.

Each flusher keeps ``window()`` requests out; a request's answer comes back when the
server model says, as a ``ClaimOutcome`` the flusher ``observe``s, exactly as the real
flusher does after a settle.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from suprsend_celery.buffer.concurrency_limit import SharedReading
from suprsend_celery.delivery.decisions import ClaimOutcome
from suprsend_celery.exceptions import TransientDeliveryError
from suprsend_celery.pipeline.concurrency import SharedConcurrency


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    """``LimitStore`` in memory, with the merge rules of ``concurrency.lua``."""

    def __init__(self, clock: Clock, active: float = 2.0) -> None:
        self.clock = clock
        self.active = active
        self.limit: float | None = None
        self.refused: float | None = None
        self.seen: dict[str, float] = {}
        self.merges = 0

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
        self.merges += 1
        now = self.clock()
        limit = start if self.limit is None else self.limit
        self.limit = min(ceiling, max(floor, limit + delta))
        if refused is not None:
            self.refused = refused or None
        self.seen = {f: t for f, t in self.seen.items() if t > now - self.active}
        if leaving:
            self.seen.pop(flusher, None)
        else:
            self.seen[flusher] = now
        ranked = sorted(self.seen)
        rank = ranked.index(flusher) if flusher in ranked else 0
        return SharedReading(self.limit, max(1, len(ranked)), rank, self.refused)


class Server:
    """A model API: ``answer(now, active)`` gives ``(seconds until the answer, status)``;
    latencies vary by ±20% (seeded), as a real network's do."""

    rng = random.Random(7)

    def answer(self, now: float, active: int) -> tuple[float, int]:
        raise NotImplementedError

    def jitter(self, seconds: float) -> float:
        return seconds * self.rng.uniform(0.8, 1.2)


@dataclass
class FixedLatency(Server):
    latency: float

    def answer(self, now: float, active: int) -> tuple[float, int]:
        return self.jitter(self.latency), 207


@dataclass
class Queueing(Server):
    """``capacity`` requests per second, served in order, plus ``latency`` each."""

    capacity: float
    latency: float
    free_at: float = 0.0

    def answer(self, now: float, active: int) -> tuple[float, int]:
        start = max(now, self.free_at)
        self.free_at = start + 1.0 / self.capacity
        return self.free_at - now + self.jitter(self.latency), 207


@dataclass
class ConcurrencyCap(Server):
    """429 at once for a request beyond ``limit`` being handled, else ``latency``."""

    limit: int
    latency: float

    def answer(self, now: float, active: int) -> tuple[float, int]:
        if active > self.limit:
            return self.jitter(0.001), 429
        return self.jitter(self.latency), 207


@dataclass
class Run:
    """What a simulated run saw."""

    requests: int = 0
    refused: int = 0
    #: ``(time, status)`` of every answer.
    answers: list[tuple[float, int]] = field(default_factory=list)
    #: ``(time, shared limit)`` after every answer.
    limits: list[tuple[float, float]] = field(default_factory=list)
    peak_active: int = 0

    def after(self, start: float) -> tuple[int, int]:
        """Requests answered and refused from ``start`` on."""
        late = [s for t, s in self.answers if t >= start]
        return len(late), sum(1 for s in late if s == 429)

    def rate(self, start: float, end: float) -> float:
        """Requests answered successfully per second between ``start`` and ``end``."""
        ok = sum(1 for t, s in self.answers if start <= t < end and s < 400)
        return ok / (end - start)


def simulate(
    server: Server,
    flushers: Sequence[SharedConcurrency],
    clock: Clock,
    seconds: float,
    store: MemoryStore | None = None,
    seed: int = 7,
) -> Run:
    """Run ``flushers`` against ``server`` for ``seconds`` of simulated time (the
    server's jitter seeded anew: a run does not depend on the runs before it)."""
    server.rng = random.Random(seed)
    run = Run()
    order = itertools.count()
    events: list[tuple[float, int, int, float, int]] = []  # (due, seq, flusher, sent, status)
    out = [0] * len(flushers)

    def fill(index: int) -> None:
        flusher = flushers[index]
        while out[index] < flusher.window():
            active = sum(out) + 1
            delay, status = server.answer(clock.now, active)
            out[index] += 1
            run.requests += 1
            run.peak_active = max(run.peak_active, active)
            heapq.heappush(events, (clock.now + delay, next(order), index, clock.now, status))

    for index in range(len(flushers)):
        fill(index)
    while events and events[0][0] < seconds:
        due, _, index, sent, status = heapq.heappop(events)
        clock.now = due
        flusher = flushers[index]
        outcome = ClaimOutcome(requests=1, seconds=due - sent, started=sent, answered=status < 400)
        if status >= 400:
            outcome.request_error = TransientDeliveryError(f"HTTP {status}", status_code=status)
            run.refused += 1
        flusher.observe(outcome, out[index])
        out[index] -= 1
        run.answers.append((due, status))
        run.limits.append((due, store.limit if store and store.limit else flusher.limit))
        fill(index)
    return run


def flushers(
    count: int, clock: Clock, store: MemoryStore, start: int = 8, ceiling: int = 64
) -> list[SharedConcurrency]:
    return [SharedConcurrency(store, start, ceiling, clock=clock) for _ in range(count)]
