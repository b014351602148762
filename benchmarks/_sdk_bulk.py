"""The official SDK's bulk path in a process of its own, measuring its own CPU.

``Suprsend(...).bulk_events.new_instance()``, ``append`` every event, ``trigger()``:
what a user of suprsend-py-sdk 0.20.0 writes to send many events. Events are built
(``suprsend.Event(...)``) before the clock starts, as our buffered records are built
by ``buffer_event`` before the flusher runs. Instances hold at most ``--per-instance``
events (the SDK chunks recursively, so one instance of 100,000 would overflow the
stack). Same protocol with the parent as ``_flusher``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from suprsend import Event, Suprsend

from benchmarks.common import WORKSPACE_KEY, WORKSPACE_SECRET, event_args, process_cpu


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--per-instance", type=int, default=10_000)
    args = parser.parse_args()

    client = Suprsend(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=args.base_url)
    warm = client.bulk_events.new_instance()
    warm.append(Event("warm-up", "bench_warm_up", {}, idempotency_key=f"warm-{args.run}"))
    warm.trigger()
    events = []
    for i in range(args.events):
        distinct_id, name, props, key = event_args(i, args.run)
        events.append(Event(distinct_id, name, props, idempotency_key=key))
    print(json.dumps({"ready": True}), flush=True)

    sys.stdin.readline()
    start, cpu0 = time.time(), process_cpu()
    success = failure = 0
    for offset in range(0, len(events), args.per_instance):
        bulk = client.bulk_events.new_instance()
        bulk.append(*events[offset : offset + args.per_instance])
        response = bulk.trigger()
        success += response.success
        failure += response.failure
    end, cpu1 = time.time(), process_cpu()
    result = {
        "start": start,
        "end": end,
        "wall": end - start,
        "cpu": cpu1 - cpu0,
        "sent": success,
        "failed": failure,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
