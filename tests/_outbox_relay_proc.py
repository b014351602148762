"""A relay in a process of its own, for tests/test_django_outbox.py.

``python _outbox_relay_proc.py ALIAS --batch N --lease S [--kill-after-pushes K]``:
configures Django as the tests do (``_django_outbox``), announces itself in Redis and
waits for the test's "go" (so that two relays start together), then relays the outbox
of database ALIAS until it is empty and prints how many rows it moved. With
``--kill-after-pushes K`` it SIGKILLs itself right after its Kth push to the buffer
succeeded, before those rows are deleted: a relay dying in the middle of a move.
Settings come from ``SUPRSEND_*`` environment variables.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

import redis
from _django_outbox import configure_from_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("alias")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--kill-after-pushes", type=int, default=0)
    parser.add_argument("--ready-key", default="outbox-test:ready")
    parser.add_argument("--go-key", default="outbox-test:go")
    args = parser.parse_args()
    configure_from_env()

    from celery import Celery
    from django.db import OperationalError

    from suprsend_celery.contrib.django import relay_outbox
    from suprsend_celery.pipeline.runtime import get_buffer

    app = Celery("outbox-relay-proc", set_as_current=False)
    buffer = get_buffer(app)
    if args.kill_after_pushes:
        original = buffer.push
        pushes = 0

        def push_then_die(records: Any) -> int:
            nonlocal pushes
            pushed = original(records)
            pushes += 1
            if pushes >= args.kill_after_pushes:
                os.kill(os.getpid(), signal.SIGKILL)
            return pushed

        buffer.push = push_then_die  # type: ignore[method-assign]

    control = redis.Redis.from_url(os.environ["SUPRSEND_REDIS_URL"])
    control.rpush(args.ready_key, os.getpid())
    deadline = time.monotonic() + 30
    while not control.exists(args.go_key):
        if time.monotonic() > deadline:
            raise SystemExit("no go from the test")
        time.sleep(0.01)
    control.close()

    moved = 0
    while True:
        try:
            report = relay_outbox(
                app, databases=[args.alias], batch_size=args.batch, lease=args.lease
            )
        except OperationalError:  # SQLite busy past its timeout: try again, as the next run would
            continue
        moved += report.moved
        if report.remaining == 0:
            break
        if not report.moved:  # the rest is the other relay's, until it deletes them
            time.sleep(0.005)
    print(moved, flush=True)


if __name__ == "__main__":
    main()
