"""The sandbox in a process of its own, so its CPU is never counted as a sender's.

Prints ``{"url": ...}`` once listening, then serves until stdin closes or SIGTERM.
It keeps only the newest ``--max-events`` events in memory (counters and idempotency
keys cover everything), so a million-event drain does not make it the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from suprsend_celery.dev.sandbox import Sandbox


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-events", type=int, default=20_000)
    parser.add_argument("--max-requests", type=int, default=10_000)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Sandbox(
        workspace_key=args.key,
        workspace_secret=args.secret,
        port=args.port,
        max_events=args.max_events,
        max_requests_logged=args.max_requests,
    ) as sandbox:
        print(json.dumps({"url": sandbox.url}), flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
