"""Make ``docs/metrics.png``: the exporter's metrics through a real outage, as Prometheus saw them.

    pip install -e ".[prometheus]" matplotlib     # matplotlib: only for this picture
    apt-get install prometheus                     # Debian's package; run here, not as a service
    python docs/make_metrics_picture.py [--out docs/metrics.png]

What runs, all on loopback: a private Redis, the sandbox as SuprSend, a flusher run
every second (what beat does), a producer buffering about 100 events a second, the
exporter (``suprsend_celery.ops.exporter.wsgi_app``) and a Prometheus server scraping it
every second. The story: normal traffic with a few events SuprSend refuses (dead
letters); then an outage (every bulk request answered 503: retries, the breaker opens,
records pile up); then SuprSend recovers and the backlog drains. The picture plots what
Prometheus' HTTP API (``/api/v1/query_range``) answers for the dashboard's queries.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import requests
from celery import Celery

from suprsend_celery import Event, buffer_events
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.ops.exporter import wsgi_app
from suprsend_celery.pipeline.runtime import get_buffer, get_flusher

KEY, SECRET = "WSKEY_picture_0123456789", "WSSECRET_picture"
#: Seconds from the start: the outage begins, SuprSend recovers, producers stop, the end.
OUTAGE, RECOVERY, QUIET, END = 25.0, 55.0, 75.0, 110.0


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def every(seconds: float, until: float, step: Callable[[], None]) -> threading.Thread:
    """Run ``step`` every ``seconds`` in a thread until ``time.time() >= until``."""

    def loop() -> None:
        while time.time() < until:
            started = time.monotonic()
            step()
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def run_story(app: Celery, sandbox: Sandbox, t0: float) -> None:
    """Traffic, an outage, a recovery, a drain; returns when the story is over."""
    counter = iter(range(10**9))

    def produce() -> None:
        n = next(counter)
        events = [Event(f"user-{n}-{i}", "order_placed", {"n": i}) for i in range(10)]
        if n % 25 == 0:
            events.append(Event(f"user-{n}", "bad_event"))  # SuprSend refuses these
        buffer_events(events, app=app)

    flusher = get_flusher(app)
    producer = every(0.1, t0 + QUIET, produce)
    beat = every(1.0, t0 + END, lambda: flusher.run(time_budget=0.9))
    refuse = {"record_errors": [{"event": "bad_event", "status": 400, "message": "refused"}]}
    sandbox.set_faults({"paths": ["/v2/bulk/event/"], "rules": [refuse]})
    time.sleep(t0 + OUTAGE - time.time())
    print(f"{OUTAGE:.0f}s: outage (every bulk request answered 503)")
    sandbox.set_faults({"paths": ["/v2/bulk/event/"], "rules": [{"status": 503}]})
    time.sleep(t0 + RECOVERY - time.time())
    print(f"{RECOVERY:.0f}s: SuprSend recovers")
    sandbox.set_faults({"paths": ["/v2/bulk/event/"], "rules": [refuse]})
    producer.join()
    print(f"{QUIET:.0f}s: producers stop")
    beat.join()
    print(f"{END:.0f}s: done; buffer: {get_buffer(app).stats()}")


def query_range(base: str, promql: str, start: float, end: float) -> list[dict[str, Any]]:
    response = requests.get(
        f"{base}/api/v1/query_range",
        params={"query": promql, "start": start, "end": end, "step": 1},
        timeout=30,
    )
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "Records waiting",
        "records",
        [
            ("suprsend_celery_pending_records", "pending"),
            ("suprsend_celery_retry_scheduled_records", "retry scheduled"),
            ("suprsend_celery_in_flight_records", "in flight"),
        ],
    ),
    (
        "Buffered records settled per second",
        "records/s",
        [("sum by (outcome) (rate(suprsend_celery_records_total[5s]))", "{outcome}")],
    ),
    (
        "Bulk requests to SuprSend per second",
        "requests/s",
        [
            (
                'sum by (status_class) (rate(suprsend_celery_requests_total{path="bulk"}[5s]))',
                "{status_class}",
            )
        ],
    ),
    (
        "Oldest record not yet delivered",
        "seconds",
        [("suprsend_celery_oldest_record_age_seconds", "oldest record age")],
    ),
    (
        "Circuit breaker",
        "1 = in state",
        [
            ('suprsend_celery_breaker_state{state="open"}', "open"),
            ('suprsend_celery_breaker_state{state="half_open"}', "half_open (probing)"),
        ],
    ),
    ("Dead letters", "records", [("suprsend_celery_dead_letters", "dead letters")]),
]


def plot(base: str, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [3, 3, 3, 2, 1.4, 1.4]
    fig, axes = plt.subplots(
        len(PANELS), 1, figsize=(10, 13), sharex=True, gridspec_kw={"height_ratios": heights}
    )
    for ax, (title, unit, queries) in zip(axes, PANELS, strict=True):
        for promql, legend in queries:
            for series in query_range(base, promql, start, end):
                if legend.startswith("{") and all(float(v) == 0 for _, v in series["values"]):
                    continue  # an outcome that never happened
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                label = legend.format(**series["metric"]) if "{" in legend else legend
                ax.plot(xs, ys, label=label, linewidth=1.4)
        ax.axvspan(OUTAGE, RECOVERY, color="tab:red", alpha=0.08, label="SuprSend down (503)")
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=3)
    axes[-1].set_xlabel("seconds (Prometheus scraping suprsend-celery metrics every second)")
    fig.suptitle("suprsend-celery metrics through an outage, retries and a drain", fontsize=12)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("metrics.png"))
    args = parser.parse_args()
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("needs a prometheus binary (apt-get install prometheus)")
    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServer(appendonly=False) as redis_server,
        Sandbox(workspace_key=KEY, workspace_secret=SECRET) as sandbox,
    ):
        app = Celery("metrics_picture", set_as_current=False)
        app.conf.update(
            broker_url=redis_server.url,
            suprsend_workspace_key=KEY,
            suprsend_workspace_secret=SECRET,
            suprsend_base_url=sandbox.url,
            suprsend_flush_interval=0,
            suprsend_request_timeout=5,
        )
        exporter = make_server("127.0.0.1", 0, wsgi_app(app), handler_class=_Quiet)
        threading.Thread(target=exporter.serve_forever, daemon=True).start()
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: suprsend-celery\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{exporter.server_port}']\n"
        )
        listen = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address={listen}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(3)  # Prometheus starts and scrapes the quiet buffer once
            t0 = time.time()
            run_story(app, sandbox, t0)
            time.sleep(3)  # the last scrapes
            plot(f"http://{listen}", t0, t0 + END, args.out)
        finally:
            server.terminate()
            server.wait(timeout=30)
            exporter.shutdown()


if __name__ == "__main__":
    main()
