"""What tracing costs: producer latency and flusher CPU per event, OpenTelemetry absent,
installed but not configured, and configured with an exporter that drops every span.

    python -m benchmarks.tracing                    # writes its section of BENCHMARKS.md
    python -m benchmarks.tracing --quick            # smaller numbers, prints only

Each mode runs in a child process of its own (an SDK provider can be set only once per
process, and "absent" must never have imported the API): ``absent`` hides the package
(``sys.modules["opentelemetry"] = None``, as if not installed, before anything imports
it: redis-py imports it when it is there); ``unconfigured`` imports the API and sets
nothing, as an application with the package installed by a dependency would;
``configured`` sets the SDK's ``TracerProvider`` with a ``BatchSpanProcessor`` in front
of an exporter that drops the spans, so what is measured is ours and the SDK's, not an
exporter's network.

- Producer latency: ``buffer_event`` timed with ``perf_counter`` around each call, in
  5 rounds after 200 warm-up calls; in the traced modes every call is made inside a
  "view" span (started outside the timed region), as from an instrumented view. For
  ``configured`` that means the view's ``traceparent`` is stored beside each record.
  The capture alone (``with_trace_context`` on one record, what ``buffer_event`` adds)
  is timed with ``timeit`` in the same span, best of 5: a figure the machine's noise
  does not blur.
- Flusher CPU: the child buffers N events (``configured``: each in a view span of its
  own, the worst case: one distinct link per record, 100 per bulk request), warms a
  flusher on 500 others, then times ``Flusher.run`` draining the N into the sandbox
  (its own process). CPU is ``getrusage(RUSAGE_SELF)`` of the child, the SDK's span
  processor thread included (it is flushed before the clock stops).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, REPO

MODES = ("absent", "unconfigured", "configured")
_START = "<!-- tracing:start -->"
_END = "<!-- tracing:end -->"
_ANALYSIS_END = "<!-- analysis:end -->"


# -- the child: one mode -----------------------------------------------------------


def _setup(mode: str) -> Any:
    """Prepare OpenTelemetry for ``mode``; returns the tracer views use (None: none)."""
    if mode == "absent":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
        return None
    from opentelemetry import trace

    if mode == "configured":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class DropExporter(SpanExporter):  # type: ignore[misc]
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(DropExporter()))
        trace.set_tracer_provider(provider)
    return trace.get_tracer("bench.view")


def _child(args: argparse.Namespace) -> int:
    tracer = _setup(args.child)
    from benchmarks.common import event_args, percentile, process_cpu, producer_app, run_id
    from suprsend_celery import buffer_event
    from suprsend_celery.pipeline.runtime import get_buffer, get_flusher

    app = producer_app(args.redis_url, args.sandbox_url, "bench-unused")
    tag = run_id()
    buffer = get_buffer(app)

    def accept(i: int, prefix: str) -> None:
        d, n, p, k = event_args(i, prefix)
        buffer_event(d, n, p, idempotency_key=k, app=app)

    def timed_calls(count: int, prefix: str) -> list[float]:
        times = []
        for i in range(count):
            start = time.perf_counter()
            accept(i, prefix)
            times.append(time.perf_counter() - start)
        return times

    # Producer latency.
    def rounds() -> list[dict[str, float]]:
        timed_calls(200, f"{tag}-warm")
        out = []
        for r in range(5):
            times = timed_calls(args.calls // 5, f"{tag}-r{r}")
            out.append({"p50": percentile(times, 50), "p99": percentile(times, 99)})
        return out

    from suprsend_celery.delivery.tracing import with_trace_context

    one = [b'{"event": "order_placed"}']

    def capture_cost() -> float:
        runs = timeit.repeat(lambda: with_trace_context(one), number=20_000, repeat=5)
        return min(runs) / 20_000

    if tracer is None:
        latency = rounds()
        capture = capture_cost()
    else:
        with tracer.start_as_current_span("GET /view"):
            latency = rounds()
            capture = capture_cost()
    stored = buffer.redis.lindex(buffer.keys.pending, -1) or b""
    traced_item = not stored.startswith(b"{")
    buffer.clear()

    # Flusher CPU per event.
    flusher = get_flusher(app)
    for i in range(500):
        accept(i, f"{tag}-fwarm")
    flusher.run(60)

    def fill() -> None:
        for i in range(args.events):
            if tracer is None:
                accept(i, f"{tag}-f")
            else:
                with tracer.start_as_current_span("POST /orders"):
                    accept(i, f"{tag}-f")

    fill()
    if args.child == "configured":  # the views' own spans are exported before the clock
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    cpu0, wall0 = process_cpu(), time.perf_counter()
    report = flusher.run(time_budget=3600)
    if args.child == "configured":
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    cpu, wall = process_cpu() - cpu0, time.perf_counter() - wall0
    result = {
        "mode": args.child,
        "latency_p50_us": statistics.median(r["p50"] for r in latency) * 1e6,
        "latency_p99_us": statistics.median(r["p99"] for r in latency) * 1e6,
        "traced_item": traced_item,
        "capture_us": capture * 1e6,
        "sent": report.sent,
        "requests": report.requests,
        "cpu_us_per_event": cpu / max(1, report.sent) * 1e6,
        "wall_s": wall,
        "otel_loaded": sys.modules.get("opentelemetry.trace") is not None,
    }
    buffer.clear()
    print(json.dumps(result), flush=True)
    return 0


# -- the parent: every mode, the report ------------------------------------------------


def _otel_installed() -> bool:
    probe = [PYTHON, "-c", "import opentelemetry.sdk.trace"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def _run_mode(mode: str, redis_url: str, sandbox: Any, calls: int, events: int) -> dict[str, Any]:
    sandbox.reset()
    argv = [PYTHON, "-m", "benchmarks.tracing", "--child", mode]
    argv += ["--redis-url", redis_url, "--sandbox-url", sandbox.url]
    argv += ["--calls", str(calls), "--events", str(events)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mode {mode} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if sandbox.stats()["events_processed"] < events:
        raise RuntimeError(f"mode {mode}: the sandbox processed {sandbox.stats()}")
    return result


def _markdown(results: list[dict[str, Any]], calls: int, events: int, rounds: int) -> str:
    base = next((r for r in results if r["mode"] == "absent"), results[0])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        _START,
        "### Tracing overhead (`python -m benchmarks.tracing`)",
        "",
        f"Run {when}: {calls} `buffer_event` calls and {events} flushed events per mode, "
        f"each mode a fresh process, {rounds} rounds of every mode interleaved. The machine "
        "is shared, so the p50 and CPU figures are the best round (the least disturbed), "
        "p99 and the CPU's median are shown as measured. See `benchmarks/tracing.py` for "
        "the method.",
        "",
        "| OpenTelemetry | `buffer_event` p50 µs | p99 µs | capture µs/call | "
        "trace context stored | flusher CPU µs/event | median | vs absent |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {
        "absent": "absent (not installed)",
        "unconfigured": "installed, not configured",
        "configured": "SDK configured, spans dropped",
    }
    for r in results:
        ratio = r["cpu_us_per_event"] / base["cpu_us_per_event"]
        lines.append(
            f"| {names[r['mode']]} | {r['latency_p50_us']:.1f} | {r['latency_p99_us']:.1f} | "
            f"{r['capture_us']:.2f} | {'yes' if r['traced_item'] else 'no'} | "
            f"{r['cpu_us_per_event']:.2f} | {r['cpu_median']:.2f} | {ratio:.2f}x |"
        )
    lines.append(_END)
    return "\n".join(lines)


def _write(path: Path, section: str) -> None:
    text = path.read_text()
    if _START in text and _END in text:
        text = text[: text.index(_START)] + section + text[text.index(_END) + len(_END) :]
    elif _ANALYSIS_END in text:  # kept across `python -m benchmarks` runs
        text = text.replace(_ANALYSIS_END, section + "\n\n" + _ANALYSIS_END)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracing")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--sandbox-url", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--rounds", type=int, help="runs of every mode (default 5)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    from benchmarks.common import SandboxProcess, log, stop_all
    from suprsend_celery.dev.redis_server import RedisServer

    calls = args.calls or (500 if args.quick else 2000)
    events = args.events or (2000 if args.quick else 20_000)
    rounds = args.rounds or (1 if args.quick else 5)
    output = args.output or (None if args.quick else REPO / "BENCHMARKS.md")
    modes = MODES if _otel_installed() else ("absent",)
    if len(modes) == 1:
        log("opentelemetry-sdk is not installed here: only the 'absent' mode runs")
    logdir = Path(tempfile.mkdtemp(prefix="suprsend-bench-tracing-"))
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    sandbox = None
    try:
        with RedisServer(appendonly=False) as server:
            sandbox = SandboxProcess(log=logdir / "sandbox.log", max_events=events + 1000)
            for n in range(rounds):
                for mode in modes:  # interleaved, so a noisy minute hits every mode
                    log(f"round {n + 1}/{rounds}: {mode}")
                    runs[mode].append(_run_mode(mode, server.url, sandbox, calls, events))
    finally:
        if sandbox is not None:
            sandbox.stop()
        stop_all()
    results = []
    for mode in modes:
        rows = runs[mode]
        merged = dict(rows[0])
        for field in ("latency_p50_us", "cpu_us_per_event", "capture_us"):
            merged[field] = min(r[field] for r in rows)
        merged["latency_p99_us"] = statistics.median(r["latency_p99_us"] for r in rows)
        merged["cpu_median"] = statistics.median(r["cpu_us_per_event"] for r in rows)
        results.append(merged)
    section = _markdown(results, calls, events, rounds)
    print(section)
    print(json.dumps(runs, indent=1), file=sys.stderr)
    if output is not None:
        _write(output, section)
        log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
