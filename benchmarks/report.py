"""The results as a table, the targets as verdicts, and ``BENCHMARKS.md``.

``write`` regenerates the whole file from one run's results but keeps the hand-written
analysis between the ``analysis:start``/``analysis:end`` markers of the previous file.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_START, _END = "<!-- analysis:start -->", "<!-- analysis:end -->"


def _fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _by_name(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["name"].startswith(prefix)), None)


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """``(target, measured, required, met)`` for every target the run can judge."""
    out: list[tuple[str, str, str, bool]] = []
    rows = results.get("throughput") or []
    ours = _by_name(rows, "buffered flusher")
    sdk = _by_name(rows, "SDK bulk")
    naive = _by_name(rows, "naive")
    if ours:
        cpu = ours["cpu_us_per_event"]
        out.append(("flusher CPU per event", f"{cpu:.2f} µs", "≤ 10 µs", cpu <= 10))
        duty = _by_name(rows, "buffered flusher on duty")
        if duty:
            ratio = duty["cpu_us_per_event"] / cpu
            label = "flusher on duty CPU/event vs draining"
            out.append((label, f"{ratio:.2f}x", "≤ 1.10x", ratio <= 1.10))
            ratio = duty["events_per_s"] / ours["events_per_s"]
            label = "flusher on duty events/s vs draining"
            out.append((label, f"{ratio:.2f}x", "≥ 0.90x", ratio >= 0.90))
        if sdk:
            ratio = sdk["cpu_us_per_event"] / cpu
            out.append(
                (
                    "loopback flusher CPU vs SDK bulk",
                    f"{ratio:.1f}x less",
                    "≥ 20x less",
                    ratio >= 20,
                )
            )
            ratio = ours["events_per_s"] / sdk["events_per_s"]
            out.append(("throughput vs SDK bulk", f"{ratio:.1f}x", "≥ 2x", ratio >= 2))
        if naive:
            ratio = ours["events_per_s"] / naive["events_per_s"]
            out.append(("throughput vs naive task", f"{ratio:.1f}x", "≥ 30x", ratio >= 30))
    lat = results.get("latency")
    if lat:
        ratio = lat["plain task .delay"]["p50_us"] / lat["buffer_event"]["p50_us"]
        out.append(("buffer_event p50 vs plain .delay", f"{ratio:.1f}x faster", "≥ 4x", ratio >= 4))
        ping = lat.get("(reference) Redis PING")
        if ping:
            ratio = lat["buffer_event"]["p50_us"] / ping["p50_us"]
            out.append(("buffer_event p50 vs Redis PING", f"{ratio:.2f}x", "≤ 1.5x", ratio <= 1.5))
    out.extend(api_latency_targets(results.get("api_latency") or []))
    out.extend(accept_latency_targets(results.get("accept_latency") or []))
    for row in results.get("saturation") or []:
        if row["sender"] != DEFAULT:
            continue
        if row["server"].startswith("capacity"):
            share = row["of_capacity"]
            label = f"default flusher at a server's capacity ({row['server']})"
            out.append((label, f"{share:.0%} of it", "≥ 80%", share >= 0.8))
        else:
            share = row["refused_share"]
            label = f"default flusher, 429s after the first second ({row['server']})"
            out.append((label, f"{share:.1%} of requests", "< 5%", share < 0.05))
    mem = results.get("memory")
    if mem:
        growth = mem["rss_growth"] / 2**20
        label = f"RSS growth, {mem['events']:,}-record drain"
        out.append((label, f"{growth:.1f} MB", "< 100 MB", growth < 100))
    return out


#: The api-latency scenario's row of a flusher with the default settings.
DEFAULT = "flusher default (adaptive)"


def _at(rows: list[dict[str, Any]], sender: str, ms: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["sender"] == sender and r["delay_ms"] == ms), None)


def _ratio(rows: list[dict[str, Any]], a: str, b: str, ms: int, key: str = "events_per_s") -> float:
    ra, rb = _at(rows, a, ms), _at(rows, b, ms)
    if not ra or not rb or not rb[key]:
        return float("nan")
    return float(ra[key] / rb[key])


def api_latency_targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """The flusher with its defaults against the SDK at 100 and 250 ms; the threads pool."""
    out: list[tuple[str, str, str, bool]] = []
    checks = (
        (DEFAULT, "SDK bulk", 100, "flusher (defaults) vs SDK bulk at 100 ms", 20.0),
        (DEFAULT, "SDK bulk", 250, "flusher (defaults) vs SDK bulk at 250 ms", 40.0),
        ("track_event threads c=32", "track_event prefork c=2", 100, "track_event threads "
         "c=32 vs prefork c=2 at 100 ms", 10.0),
    )  # fmt: skip
    for a, b, ms, label, need in checks:
        ratio = _ratio(rows, a, b, ms)
        if ratio == ratio:
            out.append((label, f"{ratio:.1f}x", f"≥ {need:g}x", ratio >= need))
    return out


def accept_latency_targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """A trickle delivered at interactive latency, a burst still in full batches."""
    ours = _by_name(rows, "buffered, defaults")
    if not ours:
        return []
    p99 = ours["trickle"]["p99_ms"]
    per = ours["burst"]["records_per_request"]
    return [
        ("buffered p99 accept to delivered, trickle", f"{p99:.1f} ms", "< 50 ms", p99 < 50),
        ("buffered records per request, burst", f"{per:.1f}", "≥ 90", per >= 90),
    ]


def accept_latency_table(rows: list[dict[str, Any]]) -> str:
    """Latency and batching per sender, trickle and burst."""
    body = []
    for r in rows:
        t, b = r["trickle"], r["burst"]
        body.append(
            [
                r["name"],
                _fmt(t["p50_ms"]),
                _fmt(t["p99_ms"]),
                _fmt(t["max_ms"]),
                _fmt(b["p50_ms"]),
                _fmt(b["p99_ms"]),
                _fmt(b["records_per_request"]),
                _fmt(t["cpu_us_per_event"], 0),
                f"{t['cpu_share'] * 100:.1f}%",
                _fmt(b["cpu_us_per_event"], 1),
            ]
        )
    header = [
        "sender",
        "trickle p50 ms",
        "p99 ms",
        "max ms",
        "burst p50 ms",
        "p99 ms",
        "burst records/request",
        "trickle CPU µs/event",
        "trickle CPU share",
        "burst CPU µs/event",
    ]
    sizes = rows[0]
    note = (
        f"Trickle: {sizes['trickle']['events']} events at 20/s; burst: "
        f"{sizes['burst']['events']} events as fast as one thread calls. CPU: the sending "
        "side (the worker and its pool, or the in-process batch's thread), idle waits "
        "included."
    )
    return note + "\n\n" + _md_table(header, body)


def api_latency_tables(rows: list[dict[str, Any]]) -> str:
    """Events/s and CPU per event per sender and latency, then the ratios."""
    delays = sorted({r["delay_ms"] for r in rows})
    senders = list(dict.fromkeys(r["sender"] for r in rows))
    heads = [f"{ms} ms" for ms in delays]

    def pivot(key: str, digits: int) -> str:
        body = []
        for sender in senders:
            cells = []
            for ms in delays:
                r = _at(rows, sender, ms)
                cells.append(_fmt(r[key], digits) if r else "n/a")
            body.append([sender, *cells])
        return _md_table(["sender", *heads], body)

    ratios = [
        ("flusher defaults (adaptive) vs SDK bulk", DEFAULT, "SDK bulk", "events_per_s"),
        ("flusher fixed c=1 vs SDK bulk", "flusher fixed c=1", "SDK bulk", "events_per_s"),
        ("flusher fixed c=8 (the old default) vs SDK bulk", "flusher fixed c=8", "SDK bulk",
         "events_per_s"),
        ("flusher fixed c=32 vs SDK bulk", "flusher fixed c=32", "SDK bulk", "events_per_s"),
        ("flusher defaults vs naive task", DEFAULT, "naive task c=2", "events_per_s"),
        ("track_event threads c=32 vs prefork c=2", "track_event threads c=32",
         "track_event prefork c=2", "events_per_s"),
        ("SDK bulk CPU/event vs flusher defaults", "SDK bulk", DEFAULT, "cpu_us_per_event"),
    ]  # fmt: skip
    ratio_rows = [
        [label, *(f"{_ratio(rows, a, b, ms, key):.1f}x" for ms in delays)]
        for label, a, b, key in ratios
    ]
    counts = [[s, *(f"{r['events']:,}" if (r := _at(rows, s, ms)) else "n/a" for ms in delays)]
              for s in senders]  # fmt: skip
    return "\n\n".join(
        [
            "Events per second (sandbox answering each request after the delay):",
            pivot("events_per_s", 0),
            "Sender CPU µs per event:",
            pivot("cpu_us_per_event", 1),
            "Ratios, same run:",
            _md_table(["ratio", *heads], ratio_rows),
            "Events per row (sized to each sender's rate, a few seconds each):",
            _md_table(["sender", *heads], counts),
        ]
    )


def sections(results: dict[str, Any]) -> list[tuple[str, str]]:
    """``(title, markdown table)`` per scenario that ran."""
    out: list[tuple[str, str]] = []
    lat = results.get("latency")
    if lat:
        base = lat["buffer_event"]["p50_us"]
        rows = [
            [
                f"`{name}`",
                str(r["calls"]),
                _fmt(r["p50_us"]),
                _fmt(r["p99_us"]),
                _fmt(r["calls_per_s"], 0),
                f"{r['p50_us'] / base:.1f}x",
            ]
            for name, r in lat.items()
        ]
        header = ["method", "calls", "p50 µs", "p99 µs", "calls/s", "p50 vs buffer_event"]
        out.append(("1. Producer latency (per call, in the caller)", _md_table(header, rows)))
    rows_t = results.get("throughput")
    if rows_t:
        ours = _by_name(rows_t, "buffered flusher") or rows_t[0]
        rows = [
            [
                r["name"],
                f"{r['events']:,}",
                f"{r.get('processed', 0):,}",
                _fmt(r["wall_s"], 2),
                _fmt(r["events_per_s"], 0),
                _fmt(r["cpu_us_per_event"], 2),
                f"{ours['events_per_s'] / r['events_per_s']:.1f}x",
                f"{r['cpu_us_per_event'] / ours['cpu_us_per_event']:.1f}x",
            ]
            for r in rows_t
        ]
        header = [
            "sender",
            "events",
            "processed",
            "wall s",
            "events/s",
            "sender CPU µs/event",
            "buffered is faster by",
            "CPU vs buffered",
        ]
        out.append(("2. Delivery throughput and sender CPU", _md_table(header, rows)))
    mem = results.get("memory")
    if mem:
        mb = 2**20
        rows = [
            [
                f"{mem['events']:,}",
                _fmt(mem["record_bytes"], 0),
                _fmt(mem["rss_baseline"] / mb),
                _fmt(mem["rss_peak"] / mb),
                _fmt(mem["rss_growth"] / mb),
                _fmt(mem["events_per_s"], 0),
                _fmt(mem["cpu_us_per_event"], 2),
            ]
        ]
        header = [
            "backlog",
            "bytes/record",
            "RSS warm MB",
            "RSS peak MB",
            "growth MB",
            "events/s",
            "CPU µs/event",
        ]
        out.append(("3. Memory: one flusher draining a backlog", _md_table(header, rows)))
    scaling = results.get("scaling")
    if scaling:
        one = scaling[0]["events_per_s"]
        rows = [
            [
                str(i + 1),
                f"{r['events']:,}",
                _fmt(r["wall_s"], 2),
                _fmt(r["events_per_s"], 0),
                _fmt(r["cpu_us_per_event"], 2),
                f"{r['events_per_s'] / one:.2f}x",
            ]
            for i, r in enumerate(scaling)
        ]
        header = ["flusher processes", "events", "wall s", "events/s", "CPU µs/event", "vs one"]
        out.append(("4. Scaling: one vs two flusher processes", _md_table(header, rows)))
    api = results.get("api_latency")
    if api:
        out.append(("5. At API latency", api_latency_tables(api)))
    accept = results.get("accept_latency")
    if accept:
        out.append(("6. Accept to delivered", accept_latency_table(accept)))
    saturation = results.get("saturation")
    if saturation:
        rows = [
            [
                r["server"],
                r["sender"],
                f"{r['events']:,}",
                _fmt(r["events_per_s"], 0),
                f"{r['of_capacity']:.0%}",
                _fmt(r["p50_latency_s"] * 1000, 0),
                f"{r['refused_share']:.1%}",
                _fmt(r["limit"], 1) if r.get("limit") is not None else "n/a",
                _fmt(r["cpu_us_per_event"], 1),
            ]
            for r in saturation
        ]
        header = [
            "server (100 ms per answer)",
            "sender",
            "events",
            "events/s",
            "of capacity",
            "p50 answer ms",
            "429s after 1 s",
            "limit at the end",
            "CPU µs/event",
        ]
        out.append(("7. An API at its limit", _md_table(header, rows)))
    return out


def table(results: dict[str, Any]) -> str:
    parts = [f"## {title}\n\n{body}" for title, body in sections(results)]
    verdicts = targets(results)
    if verdicts:
        rows = [[t, m, r, "met" if ok else "MISSED"] for t, m, r, ok in verdicts]
        parts.append("## Targets\n\n" + _md_table(["target", "measured", "required", ""], rows))
    return "\n\n".join(parts)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _redis_version(binary: str | None) -> str:
    if not binary:
        return "unknown"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    match = re.search(r"v=(\S+)", out.stdout)
    name = Path(binary).name
    return f"{name} {match.group(1)}" if match else name


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError):
        memory = "unknown RAM"
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {memory}, {system}"


def versions(results: dict[str, Any]) -> str:
    items = [
        ("python", platform.python_version()),
        ("suprsend-celery", _version("suprsend-celery")),
        ("celery", _version("celery")),
        ("kombu", _version("kombu")),
        ("redis-py", _version("redis")),
        ("hiredis", _version("hiredis")),
        ("requests", _version("requests")),
        ("urllib3", _version("urllib3")),
        ("suprsend-py-sdk", _version("suprsend-py-sdk")),
        ("server", _redis_version(results.get("redis_binary"))),
    ]
    return ", ".join(f"{name} {version}" for name, version in items)


METHOD = """\
- One command, `python -m benchmarks`, starts a private Redis (`RedisServer`, no
  persistence), the sandbox in its own process (`benchmarks/_sandbox.py`, so its CPU is
  never counted as a sender's) and every sender it measures, in this order, in one run.
- Every scenario sends the same events: `order_placed` for `user-<n>` with five
  realistic order properties (id, amount, currency, items, channel) and a unique
  idempotency key; a record is about {record_bytes} bytes serialised.
- Producer latency: each call timed with `perf_counter` in this process, the four
  methods interleaved in 5 rounds after 50 warm-up calls each. `buffer_event` and
  `track_event.delay` include validation and serialisation; the plain task gets the
  same arguments; the SDK call includes building its `Event` and its HTTP request.
  `await abuffer_event` and `await atrack_event` are timed around each `await` inside
  one asyncio loop, as an async view sees them.
- A Redis `PING` is timed with them as a reference: the loopback round trip under
  every call that waits for Redis (one for `buffer_event`).
- Throughput and CPU: each sender drains the same N events into the sandbox; the
  clock runs from "go" to the sandbox having processed all N. Only the sending
  processes' CPU is counted: `getrusage(RUSAGE_SELF)` inside the flusher and SDK
  processes, `psutil` over a Celery worker and its prefork pool. Workers (prefork,
  concurrency 2, the relay app's settings) are warmed up on a side queue and then
  pointed at the loaded queue with `add_consumer`, so start-up is not measured; a
  flusher process first drains 300 events from a side buffer, as a long-running
  worker would have (scripts loaded, connections open). The
  buffered and SDK senders start from events already built (by `buffer_events` and
  `suprsend.Event(...)` respectively): both measure the sending side only.
- Memory: the backlog is pushed straight into the pending list (pipelined `RPUSH`
  of records as `buffer_event` stores them), then one flusher process drains it
  while its RSS is sampled every 0.1 s; growth = peak minus RSS when warm.
- Scaling: the same buffered drain with one, then two, flusher processes.
- At API latency: the sandbox holds every event request for 0, 50, 100 or 250 ms
  before answering (a real API's latency; it serves requests concurrently), and each
  sender drains events as in the throughput scenario: our flusher process with the
  default settings (adaptive concurrency, starting at 8 requests in flight, up to
  64) and at a fixed 1, 8 (the default before adaptation) and 32, the SDK's bulk path,
  `track_event` on a prefork worker (concurrency 2) and on a threads-pool worker
  (`-P threads`, concurrency 32), and the naive task (prefork, concurrency 2). Each
  row's event count follows the sender's expected rate, so each takes a few seconds;
  the adaptive row drains up to 60,000 events, so its start from 8 in flight weighs
  as it would on a backlog.
- Accept to delivered: each event's clock starts just before the call in this
  process (`time.time()`) and stops when the sandbox processed its key (its own
  `time.time()`, `GET /_sandbox/processed`). A trickle of 20 events/s (one by one),
  then a burst (one thread calling as fast as it can), each on a worker started for
  the sender and warmed up with 10 events: the standalone relay with `--beat` and
  the threads pool (4) with default settings (a run on duty), the same with
  `SUPRSEND_FLUSH_WAIT=false` (interval-only runs, the behaviour before), the direct
  path on the relay (prefork, concurrency 2), and a PostHog-style in-process batch
  (a thread posting every 0.5 s or at 100 events, through our client).
- An API at its limit: the sandbox's load models, at 100 ms per answer: a server that
  works through 100 requests a second one after the other (beyond that, requests
  queue and answers slow down), and one that answers 429 beyond 16 requests at once.
  Each flusher drains 40,000 events until none is left, refused ones included; the
  row compares its rate with the server's capacity, and counts the answers' median
  latency and the 429s after the first second (from the sandbox's request log).
- The machine has 2 cores shared by Redis, the sandbox and the senders, so the
  end-to-end rates are bounded by the sandbox as much as by the senders; the CPU per
  event is the figure that shows the sender's own cost.
"""


def write(path: Path, results: dict[str, Any]) -> None:
    analysis = f"{_START}\n_Analysis to be written after the run._\n{_END}"
    if path.exists():
        previous = path.read_text()
        if _START in previous and _END in previous:
            analysis = previous[previous.index(_START) : previous.index(_END) + len(_END)]
    when = datetime.datetime.fromtimestamp(results["started"], datetime.UTC)
    minutes = (results["finished"] - results["started"]) / 60
    record_bytes = "330"
    if results.get("memory"):
        record_bytes = f"{results['memory']['record_bytes']:.0f}"
    args = results.get("args", {})
    body = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks` (see `benchmarks/`); the analysis section is "
        "written by hand and kept across runs. Figures are from one run on a shared "
        "2-core VM: rates and CPU vary by a few percent between runs, latencies by more "
        "(they follow the VM's loopback round trip; see the Redis PING row).",
        "",
        f"- Date: {when:%Y-%m-%d %H:%M} UTC, the run took {minutes:.1f} minutes",
        f"- Machine: {machine()}",
        f"- Versions: {versions(results)}",
        f"- Sizes: {args.get('calls')} calls per producer method, {args.get('events')} events "
        f"per throughput run ({args.get('naive_events')} for the naive task), "
        f"{args.get('backlog'):,} records for the memory run, "
        f"{args.get('trickle')} + {args.get('burst')} events accepted to delivered",
        "",
        "## Method",
        "",
        METHOD.format(record_bytes=record_bytes),
        table(results),
        "",
        "## Analysis",
        "",
        analysis,
        "",
    ]
    path.write_text("\n".join(body))
