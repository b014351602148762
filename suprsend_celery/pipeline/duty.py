"""A flush run on duty: it waits on Redis for new records instead of ending when the
buffer is empty, so a buffered event is sent within milliseconds of its accept.

Beat starts ``flush_buffer`` every ``suprsend_flush_interval``; each run takes a place
on the roster (``buffer.wake.DutyRoster``: at most ``DUTY_RUNS_MAX`` runs, under
leases) and, whenever it finds the buffer empty, blocks on every shard's wake list
(``BLPOP``, one connection per shard, in threads of its own). Every script that makes
records claimable leaves a token there, so the run wakes within a round trip and
claims. It stays on duty for one interval plus ``DUTY_HANDOVER``, and leaves as soon
as it sees the next run on the roster: no gap, no pile of idle runs. A run that finds
no place drains the buffer and ends, as every run did before.

What bounds each block (``Shift.wait``), besides a token:

- a request in flight finishing (its claim is settled at once);
- the next retry or lease falling due (CLAIM says when, ``Claim.due_in``);
- the breaker's next probe (an open breaker parks the run: it neither blocks on the
  wake lists nor claims until then);
- the linger: while records keep arriving (a claim within ``linger`` of the last one
  that took records) a claim takes nothing until a full batch waits (``fill``): the
  run lets the batch fill for up to ``linger`` seconds, looking four times whether it
  is full, then takes what is there, as a Kafka producer does;
- ``WAIT_SLICE``: the run renews its place (which also notes, for ``check``, that a
  flush run is alive), looks for the next run, claims (retries scheduled and claims
  taken since it last looked), and notices a warm shutdown at least this often; the
  ``stopped`` future (resolved by the worker's ``worker_shutting_down``) ends a wait
  at once.

A token taken by a run that leaves before it could claim is put back, so another run
wakes for it. A run killed while it waits loses nothing: its tokens only say "look",
its place expires with its lease, and the next run's first claim finds the records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import defaults
from ..buffer.protocol import Buffer
from ..buffer.wake import WakeList

__all__ = ["DutyPlan", "RunState", "Shift", "Shutdown", "shutdown"]

logger = logging.getLogger(__name__)


class Shutdown:
    """A warm shutdown of this process's worker: runs on duty end their waits at once.

    ``request()`` (Celery's ``worker_shutting_down``) resolves every future handed out;
    ``clear()`` (a worker starting in this process) arms it again. That signal reaches
    only the worker's main process, which is where a threads or solo pool runs the
    flush task; a prefork pool runs it in a child the worker forked after ``clear()``.
    So ``clear()`` also opens a pipe the children inherit, ``request()`` writes to it,
    and a child's first ``future()`` starts a thread that reads it: a waiting run in a
    child leaves at once (tested: within 1.5 s of SIGTERM), not at the end of its duty.
    """

    #: Bytes written at a shutdown: one read per child on duty, far more than any pool.
    _WAKE_BYTES = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._future: Future[None] = Future()
        self._owner = 0  # the process that armed the pipe (the worker's main process)
        self._pipe: tuple[int, int] | None = None
        self._reader_pid = 0  # the child process whose reader thread is running

    def future(self) -> Future[None]:
        with self._lock:
            future = self._future
            pipe, pid = self._pipe, os.getpid()
            if pipe is not None and pid not in (self._owner, self._reader_pid):
                self._reader_pid = pid  # a forked child: follow the parent's requests
                threading.Thread(target=self._follow, args=(pipe[0], future), daemon=True).start()
            return future

    @staticmethod
    def _follow(fd: int, future: Future[None]) -> None:
        try:
            os.read(fd, 1)
        except OSError:  # closed: this child's worker is gone, nothing to follow
            return
        if not future.done():
            future.set_result(None)

    def request(self) -> None:
        with self._lock:
            future, pipe = self._future, self._pipe
            owner = pipe is not None and os.getpid() == self._owner
        if not future.done():
            future.set_result(None)
        if owner:
            assert pipe is not None
            with contextlib.suppress(OSError):  # full (said already) or closed
                os.write(pipe[1], b"x" * self._WAKE_BYTES)

    def clear(self) -> None:
        with self._lock:
            if self._future.done():
                self._future = Future()
            self._close_pipe()
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._pipe, self._owner, self._reader_pid = (read, write), os.getpid(), 0

    def _close_pipe(self) -> None:
        if self._pipe is not None and os.getpid() == self._owner:
            for fd in self._pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pipe = None

    @property
    def requested(self) -> bool:
        return self.future().done()


shutdown = Shutdown()
"""This process's: set by the Celery glue (``tasks.flush``)."""


@dataclass(frozen=True, slots=True)
class DutyPlan:
    """How one run stays on duty (the ``flush_buffer`` task builds it from the settings)."""

    #: Seconds on duty from the start of the run (about one flush interval).
    seconds: float
    #: ``suprsend_flush_linger``.
    linger: float = defaults.FLUSH_LINGER
    cap: int = defaults.DUTY_RUNS_MAX
    #: True once the worker is stopping (checked at least every ``WAIT_SLICE``).
    stopping: Callable[[], bool] = field(default=lambda: False)
    #: Resolved when the worker stops: ends a wait at once.
    stopped: Future[None] | None = None


class RunState(Protocol):
    """What a shift reads and steers of the flusher's run (``flusher._Run``)."""

    idle: bool
    stopped: bool
    parked_until: float
    linger_until: float
    next_look: float
    lingered: bool
    last_taken: float
    waited: float


class Shift:
    """One run's time on duty: its place on the roster and its waits."""

    def __init__(self, buffer: Buffer, plan: DutyPlan, member: str, started: float) -> None:
        self.buffer = buffer
        self.plan = plan
        self.member = member
        self.until = started + plan.seconds
        self.on = True
        self.due_at: float | None = None
        self._renewed = time.monotonic()
        self._lists: list[WakeList] = buffer.wake_lists()
        self._listening: dict[int, Future[bool]] = {}
        self._threads = ThreadPoolExecutor(len(self._lists), thread_name_prefix="suprsend-wake")

    @classmethod
    def start(cls, buffer: Buffer, plan: DutyPlan, started: float) -> Shift | None:
        """Take a place on duty, or None when ``plan.cap`` runs are on duty already."""
        if plan.seconds <= 0 or plan.stopping() or (plan.stopped and plan.stopped.done()):
            return None
        member = buffer.duty_roster().join(uuid.uuid4().hex, defaults.DUTY_LEASE, plan.cap)
        if member is None:
            logger.debug("%d flush runs on duty already: this one drains and ends", plan.cap)
            return None
        return cls(buffer, plan, member, started)

    # -- deciding ------------------------------------------------------------------------

    def fill(self, run: RunState, batch_size: int) -> int:
        """What the next claim must find to take anything: a full batch while records
        keep arriving (the last claim took some less than ``linger`` ago) or while a
        batch fills, else any."""
        linger = self.plan.linger
        if not self.on or linger <= 0:
            return 0
        now = time.monotonic()
        if run.lingered:
            if now < run.linger_until:
                return batch_size  # a look while the batch fills
            run.lingered = False  # it had its time: take what is there
            return 0
        return batch_size if now - run.last_taken < linger else 0

    def short(self, run: RunState) -> None:
        """A claim found records but not a full batch: let it fill for ``linger``,
        looking again every quarter of it."""
        now = time.monotonic()
        if not run.lingered:
            run.lingered = True
            run.linger_until = now + self.plan.linger
        run.next_look = min(now + self.plan.linger / 4, run.linger_until)

    def empty(self, run: RunState, due_in: float | None) -> None:
        """The buffer is empty: wait for a token (or ``due_in``, when a retry or a lease
        falls due)."""
        run.idle = True
        self.due_at = None if due_in is None else time.monotonic() + due_in

    def park(self, run: RunState, seconds: float) -> None:
        """The breaker is open: claim nothing until its next probe."""
        run.parked_until = time.monotonic() + seconds

    # -- waiting -------------------------------------------------------------------------

    def wait(
        self, in_flight: Iterable[Future[Any]], run: RunState, lease: float, *, room: bool
    ) -> set[Future[Any]]:
        """Wait for whichever comes first (see the module docstring); returns the
        requests that finished. ``room``: another claim could go (no full window) once
        the run's own state allows. Raises what Redis raised in a wake-up."""
        requests = set(in_flight)
        now = time.monotonic()
        bounds = [defaults.WAIT_SLICE, self.until - now]
        if requests:
            bounds.append(lease / 3)
        # Set until the next claim, so a time that passed since the claim loop looked
        # ends this wait at once rather than after a slice.
        for until in (run.parked_until, run.next_look) if room else ():
            if until:
                bounds.append(until - now)
        listening = run.idle and room
        if listening and self.due_at is not None:
            bounds.append(self.due_at - now)
        waits: set[Future[Any]] = set(requests)
        if listening:
            waits.update(self._listen())
        if self.plan.stopped is not None:
            waits.add(self.plan.stopped)
        done, _ = wait(waits, timeout=max(0.0, min(bounds)), return_when=FIRST_COMPLETED)
        after = time.monotonic()
        if not requests:
            run.waited += after - now
        woke = self._woken()
        if run.idle and (
            woke
            or (self.due_at is not None and after >= self.due_at)
            or (listening and not done)  # a whole slice without a token: look anyway
        ):
            run.idle = False
        self._look_around(run, after, woke)
        return done & requests

    def _listen(self) -> list[Future[bool]]:
        """One block per wake list (each in its own thread, on its own connection),
        kept across waits until it returns."""
        for index, wake in enumerate(self._lists):
            if index not in self._listening:
                self._listening[index] = self._threads.submit(wake.wait, defaults.WAIT_SLICE)
        return list(self._listening.values())

    def _woken(self) -> bool:
        """Whether a block returned a token; raises a block's Redis error."""
        woke = False
        for index, future in list(self._listening.items()):
            if future.done():
                del self._listening[index]
                woke = future.result() or woke
        return woke

    def _look_around(self, run: RunState, now: float, woke: bool) -> None:
        """End the shift at its time, at a shutdown, or once the next run is on duty;
        renew the place (and note the run alive) at each wake-up and at least every
        ``WAIT_SLICE``, so two runs share a burst's records (and split its batches)
        for one batch at most while the next takes over."""
        stopping = self.plan.stopping() or (
            self.plan.stopped is not None and self.plan.stopped.done()
        )
        if stopping:
            run.stopped = True  # a warm shutdown: claim nothing more
        if run.stopped or now >= self.until:  # (stopped: credentials refused, say)
            self.end(run)
            return
        if not woke and now - self._renewed < defaults.WAIT_SLICE:
            return
        self._renewed = now
        newer = self.buffer.duty_roster().renew(self.member, defaults.DUTY_LEASE)
        if newer is None or newer > 0:
            self.end(run)

    def end(self, run: RunState | None = None) -> None:
        """Leave duty: the run drains what is left and ends. Tokens that blocks still
        out take later are put back, for another run."""
        if not self.on:
            return
        self.on = False
        if run is not None:
            run.idle = False  # one more claim: what came since the last look
            run.parked_until = run.linger_until = run.next_look = 0.0
            run.lingered = False
        for index, future in self._listening.items():
            future.add_done_callback(_give_back_to(self._lists[index]))
        self._listening.clear()
        self._threads.shutdown(wait=False)
        try:
            self.buffer.duty_roster().leave(self.member)
        except Exception:  # the place expires with its lease anyway
            logger.debug("could not leave duty", exc_info=True)


def _give_back_to(wake: WakeList) -> Callable[[Future[bool]], None]:
    def give_back(future: Future[bool]) -> None:
        if future.cancelled() or future.exception() is not None or not future.result():
            return
        try:
            wake.give_back()
        except Exception:  # the next run's first claim finds the records anyway
            logger.debug("could not put a wake token back", exc_info=True)

    return give_back
