"""The standalone relay with a short claim lease, for runs that SIGKILL its workers.

    RELAY_CLAIM_LEASE=1.5 celery -A benchmarks.relay_app worker --pool=prefork ...

Exactly ``suprsend_celery.app`` (configured from the environment), except that each
pool process's flusher (each worker's, with the threads pool) holds its claims for
``RELAY_CLAIM_LEASE`` seconds (default 5) instead of a minute, so the records of a
killed worker come back within a soak or a test. The lease is not a setting:
production flushers derive it from the timeouts.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_init, worker_process_init

from suprsend_celery.app import app
from suprsend_celery.pipeline.runtime import get_flusher

__all__ = ["app"]

LEASE = float(os.environ.get("RELAY_CLAIM_LEASE", "5"))


def _short_lease(**_: Any) -> None:
    get_flusher(app).lease = LEASE


worker_process_init.connect(_short_lease, weak=False)  # prefork: each pool process
worker_init.connect(_short_lease, weak=False)  # threads and solo: the worker's own
