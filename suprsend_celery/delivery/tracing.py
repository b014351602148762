"""OpenTelemetry traces, optional: every use of the ``opentelemetry`` API is in this module.

With the ``otel`` extra (``opentelemetry-api`` only; the SDK and exporters are the
application's choice) an event can be followed from the request that accepted it to
SuprSend's answer::

    view span ── buffer_event: the record is stored with the view's ``traceparent``
    suprsend.flush ─┬─ suprsend.send_bulk (links to the traces of its records)
                    └─ suprsend.send_bulk ...
    view span ── track_event.delay: ``traceparent`` in the Celery message headers
                 └─ suprsend.send_event (the worker's attempt; a retry is its child)

Only keys, names and counts go into spans: idempotency keys, the event name, the task
id, claim ids, status codes, attempts. Never a property, a distinct_id, an error's
message (a server may quote a value in it) or a credential. The trace context is
never sent to SuprSend: it travels beside the record (``events.records``) or in the
task message's headers.

Costs nothing measurable when OpenTelemetry is absent or not configured (BENCHMARKS.md):
the API is imported only once something else in the process has imported
``opentelemetry.trace`` (the application configuring an SDK, an instrumentation, or
redis-py, which does when the API is installed), so without it every call here is one
dict lookup. With the API but no SDK, the current span is invalid and the spans
started are non-recording: nothing is captured, no link is parsed.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from ..__about__ import __version__
from ..events.records import join_item
from ..exceptions import ConfigurationError, DeliveryError
from .decisions import Batch, Settlement
from .responses import BulkResponse

if TYPE_CHECKING:  # the [otel] extra's API, imported lazily below
    from opentelemetry.trace import Link, Span

__all__ = [
    "ClaimSpans",
    "RequestSpan",
    "SendEventSpan",
    "claim_spans",
    "current_traceparent",
    "send_event_span",
    "trace_headers",
    "traced_flush",
    "with_trace_context",
]

#: The W3C header (and Celery message header) that carries a trace context.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


class _Otel:
    """The API, its tracer and the W3C propagator: loaded once, on first use."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.trace = trace
        # A proxy until the application sets its provider, then that provider's tracer.
        self.tracer = trace.get_tracer("suprsend_celery", __version__)
        self.propagator = TraceContextTextMapPropagator()


_loaded: list[_Otel] = []


def _otel() -> _Otel | None:
    """The API when this process uses OpenTelemetry at all, else None (one dict lookup)."""
    if _loaded:
        return _loaded[0]
    if "opentelemetry.trace" not in sys.modules:
        return None  # nothing imported the API: no span can be current, no SDK is set
    _loaded.append(_Otel())
    return _loaded[0]


def _sampled_context(otel: _Otel) -> bool:
    context = otel.trace.get_current_span().get_span_context()
    return bool(context.is_valid and context.trace_flags.sampled)


# -- the accept: capture the caller's context ------------------------------------------


def current_traceparent() -> bytes | None:
    """The W3C ``traceparent`` of the caller's current span when it is sampled (a link to
    a trace nobody recorded leads nowhere), else None."""
    otel = _otel()
    if otel is None or not _sampled_context(otel):
        return None
    carrier: dict[str, str] = {}
    otel.propagator.inject(carrier)
    value = carrier.get(TRACEPARENT)
    return value.encode("ascii") if value else None


def with_trace_context(payloads: list[bytes]) -> list[bytes]:
    """Records as the buffer stores them: with the caller's ``traceparent`` beside each
    (``events.records``), or unchanged when there is none."""
    traceparent = current_traceparent()
    if traceparent is None:
        return payloads
    return [join_item(0, payload, traceparent) for payload in payloads]


def trace_headers() -> dict[str, str]:
    """Celery message headers carrying the caller's trace context (``{}`` when none)."""
    otel = _otel()
    if otel is None or not otel.trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    otel.propagator.inject(carrier)
    return carrier


# -- the direct path: one span per attempt ---------------------------------------------


class _Attempt(Protocol):
    """What the send span reads of a ``tasks.attempt.DirectAttempt``."""

    @property
    def key(self) -> str: ...
    @property
    def event_name(self) -> str | None: ...
    @property
    def number(self) -> int: ...
    @property
    def task_id(self) -> str | None: ...
    @property
    def status_code(self) -> int | None: ...
    @property
    def outcome(self) -> str | None: ...


class SendEventSpan:
    """The worker's span for one ``track_event`` run; says how the run ended."""

    def __init__(self, span: Span | None = None) -> None:
        self.span = span
        self.outcome = ""

    def retrying(self, countdown: float, status_code: int | None, error: BaseException) -> None:
        """The run ends in a retry ``countdown`` seconds from now."""
        self.outcome = "retry"
        if self.span is not None:
            attributes: dict[str, Any] = {
                "suprsend.retry_in_seconds": round(countdown, 3),
                "error.type": type(error).__name__,
            }
            if status_code is not None:
                attributes["http.response.status_code"] = status_code
            self.span.add_event("retry", attributes)

    def _finish(self, attempt: _Attempt, error: BaseException | None) -> None:
        span = self.span
        if span is None:
            return
        if not self.outcome:
            self.outcome = attempt.outcome or _direct_outcome(error)
        if self.outcome in ("dead_lettered", "kept"):
            span.add_event(
                "dead_letter" if self.outcome == "dead_lettered" else "kept_in_buffer",
                {"suprsend.attempt": attempt.number, "error.type": type(error).__name__},
            )
        if attempt.status_code is not None:
            span.set_attribute("http.response.status_code", attempt.status_code)
        span.set_attribute("suprsend.outcome", self.outcome)
        if error is not None and self.outcome != "retry":
            span.set_attribute("error.type", type(error).__name__)
            from opentelemetry.trace import StatusCode

            span.set_status(StatusCode.ERROR, self.outcome)


def _direct_outcome(error: BaseException | None) -> str:
    """A run's outcome when the attempt did not say (sent, or an unexpected error)."""
    if error is None:
        return "sent"
    if isinstance(error, DeliveryError | ConfigurationError):
        return "failed"
    return "error"


_NO_SEND_SPAN = SendEventSpan()


@contextmanager
def send_event_span(header: Callable[[str], object], attempt: _Attempt) -> Iterator[SendEventSpan]:
    """A ``suprsend.send_event`` span around one run of ``track_event``, made current (a
    retry published inside carries it on), in the caller's trace: the current span's
    (an instrumentation's task span) when there is one, else the one ``header`` (the
    task message's headers) carries."""
    otel = _otel()
    if otel is None:
        yield _NO_SEND_SPAN
        return
    parent = None
    if not otel.trace.get_current_span().get_span_context().is_valid:
        carrier = {}
        for name in (TRACEPARENT, TRACESTATE):
            value = header(name)
            if isinstance(value, str):
                carrier[name] = value
        if carrier:
            parent = otel.propagator.extract(carrier)
    attributes: dict[str, Any] = {
        "suprsend.idempotency_key": attempt.key,
        "suprsend.attempt": attempt.number,
    }
    if attempt.event_name:
        attributes["suprsend.event_name"] = attempt.event_name
    if attempt.task_id:
        attributes["celery.task_id"] = attempt.task_id
    span = otel.tracer.start_span(
        "suprsend.send_event",
        context=parent,
        kind=otel.trace.SpanKind.CLIENT,
        attributes=attributes,
    )
    handle = SendEventSpan(span if span.is_recording() else None)
    # Current even when not recording: it still carries the caller's context to a retry.
    with otel.trace.use_span(
        span, end_on_exit=True, record_exception=False, set_status_on_exception=False
    ):
        try:
            yield handle
        except BaseException as exc:
            handle._finish(attempt, exc)
            raise
        handle._finish(attempt, None)


# -- the buffered path: a run, its bulk requests -----------------------------------------


class _Report(Protocol):
    """What the run span reads of a ``pipeline.flusher.FlushReport``."""

    @property
    def sent(self) -> int: ...
    @property
    def retry_scheduled(self) -> int: ...
    @property
    def dead_lettered(self) -> int: ...
    @property
    def returned(self) -> int: ...
    @property
    def remaining(self) -> int: ...
    @property
    def requests(self) -> int: ...
    @property
    def breaker(self) -> str: ...


class _Run:
    """A recording flush run: its span and the claims whose spans are still open."""

    def __init__(self, otel: _Otel, span: Span) -> None:
        self.otel = otel
        self.span = span
        self.context = otel.trace.set_span_in_context(span)
        self.open: set[ClaimSpans] = set()


_RUN: ContextVar[_Run | None] = ContextVar("suprsend_flush_run", default=None)

_P = ParamSpec("_P")
_R = TypeVar("_R", bound=_Report)


def traced_flush(run: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make a flush run a ``suprsend.flush`` span (a child of the current span, if any)
    whose attributes are the run's report."""

    @functools.wraps(run)
    def traced(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        otel = _otel()
        if otel is None:
            return run(*args, **kwargs)
        span = otel.tracer.start_span("suprsend.flush")
        if not span.is_recording():
            return run(*args, **kwargs)
        state = _Run(otel, span)
        token = _RUN.set(state)
        try:
            with otel.trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                report = run(*args, **kwargs)
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(otel.trace.StatusCode.ERROR, "flush run failed")
            raise
        else:
            span.set_attributes(
                {
                    "suprsend.sent": report.sent,
                    "suprsend.retry_scheduled": report.retry_scheduled,
                    "suprsend.dead_lettered": report.dead_lettered,
                    "suprsend.returned": report.returned,
                    "suprsend.remaining": report.remaining,
                    "suprsend.requests": report.requests,
                    "suprsend.breaker": report.breaker,
                }
            )
            return report
        finally:
            _RUN.reset(token)
            for claim in list(state.open):  # a run that failed mid-way: end what is open
                claim.settled(None)
            span.end()

    return traced


class RequestSpan:
    """One bulk request's span, as its request thread sees it."""

    def __init__(self, span: Span | None, offset: int, count: int) -> None:
        self.span = span
        self.offset = offset
        self.count = count
        self.end_ns = 0

    def answered(self, response: BulkResponse) -> None:
        """Note SuprSend's answer (or the request's failure) on the span."""
        span = self.span
        if span is None:
            return
        error = response.request_error
        status = response.status_code if error is None else error.status_code
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_attribute("suprsend.accepted", 0)
        else:
            span.set_attribute("suprsend.accepted", self.count - len(response.failures or ()))


class ClaimSpans:
    """The spans of one claim's bulk requests, ended when the claim is settled, so the
    retries and dead letters it decided are events on the request that carried them."""

    def __init__(
        self, run: _Run | None = None, claim_id: str = "", batch: Batch | None = None
    ) -> None:
        self.run = run
        self.claim_id = claim_id
        self.batch = batch
        self.requests: list[RequestSpan] = []
        if run is not None:
            run.open.add(self)

    @contextmanager
    def request(self, offset: int, count: int) -> Iterator[RequestSpan]:
        """A ``suprsend.send_bulk`` span around one request of ``count`` records from
        ``offset``, linked to the traces they were accepted in; current in this thread
        (an HTTP instrumentation's span nests in it)."""
        run, batch = self.run, self.batch
        if run is None or batch is None:
            yield _NO_REQUEST
            return
        otel = run.otel
        attempts = batch.attempts[offset : offset + count] if batch.attempts else ()
        span = otel.tracer.start_span(
            "suprsend.send_bulk",
            context=run.context,
            kind=otel.trace.SpanKind.CLIENT,
            attributes={
                "suprsend.claim": self.claim_id,
                "suprsend.records": count,
                "suprsend.attempt": max(attempts, default=0) + 1,
            },
            links=_links(otel, batch.traceparents[offset : offset + count]),
        )
        request = RequestSpan(span, offset, count)
        self.requests.append(request)
        try:
            with otel.trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                yield request
        finally:
            request.end_ns = time.time_ns()
            if self.run is None:  # the run ended while this request was out
                span.end(request.end_ns)

    def settled(self, settlement: Settlement | None) -> None:
        """Note what the settle did with each record, then end the request spans (at the
        time each request ended). None: the claim was not settled (a lost lease, a run
        that failed): its records went back to the buffer."""
        run, self.run = self.run, None
        if run is None:
            return
        run.open.discard(self)
        if settlement is None:
            for request in self.requests:
                if request.span is not None:
                    request.span.set_attribute("suprsend.returned", request.count)
        else:
            _note_settlement(run, self.requests, settlement)
        for request in self.requests:
            if request.span is not None:
                request.span.end(request.end_ns or None)


_NO_REQUEST = RequestSpan(None, 0, 0)
_NO_CLAIM = ClaimSpans()


def claim_spans(claim_id: str, batch: Batch) -> ClaimSpans:
    """The spans of a claim's requests when the current flush run is recording, else a
    shared object that records nothing."""
    run = _RUN.get()
    if run is None:
        return _NO_CLAIM
    return ClaimSpans(run, claim_id, batch)


def _links(otel: _Otel, traceparents: Sequence[bytes | None]) -> list[Link]:
    """One link per distinct trace context (a batch buffered by one request shares one);
    ``events.records`` checked their shape when it read them."""
    found: dict[bytes, Link] = {}
    for traceparent in traceparents:
        if traceparent is None or traceparent in found:
            continue
        context = otel.trace.SpanContext(
            trace_id=int(traceparent[3:35], 16),
            span_id=int(traceparent[36:52], 16),
            is_remote=True,
            trace_flags=otel.trace.TraceFlags(int(traceparent[53:55], 16)),
        )
        if context.is_valid:
            found[traceparent] = otel.trace.Link(context)
    return list(found.values())


def _note_settlement(run: _Run, requests: Sequence[RequestSpan], settlement: Settlement) -> None:
    """Retries and dead letters as events on the request that last carried each record;
    per-request counts as attributes; unreadable items (never sent) on the run span."""

    def carrier(index: int) -> RequestSpan | None:
        for request in reversed(requests):  # a refused request's halves come later
            if request.offset <= index < request.offset + request.count:
                return request
        return None

    counts: dict[int, list[int]] = {id(r): [0, 0] for r in requests}
    for retry in settlement.retries:
        request = carrier(retry.index)
        if request is None or request.span is None:
            continue
        counts[id(request)][0] += 1
        request.span.add_event(
            "retry",
            _record_attributes(retry.key, retry.attempt, retry.error)
            | {"suprsend.retry_in_seconds": round(retry.delay, 3)},
            timestamp=request.end_ns or None,
        )
    for dead in settlement.dead:
        request = carrier(dead.index) if dead.index >= 0 else None
        target = request.span if request is not None else run.span
        if request is not None:
            counts[id(request)][1] += 1
        if target is not None:
            target.add_event(
                "dead_letter",
                _record_attributes(dead.key, dead.attempt, dead.error),
                timestamp=(request.end_ns or None) if request is not None else None,
            )
    for request in requests:
        if request.span is not None:
            retried, dead_lettered = counts[id(request)]
            request.span.set_attribute("suprsend.retry_scheduled", retried)
            request.span.set_attribute("suprsend.dead_lettered", dead_lettered)


def _record_attributes(key: str | None, attempt: int, error: DeliveryError) -> dict[str, Any]:
    """Key, attempt, status and error class of one record: never its content."""
    attributes: dict[str, Any] = {"suprsend.attempt": attempt, "error.type": type(error).__name__}
    if key:
        attributes["suprsend.idempotency_key"] = key
    if error.status_code is not None:
        attributes["http.response.status_code"] = error.status_code
    return attributes
