"""``suprsend-celery``: operate the buffer from a shell.

    suprsend-celery status [--json]                 buffer figures and the breaker
    suprsend-celery flush                           drain the buffer now, with a progress bar
    suprsend-celery dead-letters list [--json]      what could not be delivered, and why
    suprsend-celery dead-letters requeue --key K    send dead letters again (or --all)
    suprsend-celery dead-letters purge --all        drop dead letters (asks first)
    suprsend-celery metrics [--port 9808]           a Prometheus exporter (extra: prometheus)
    suprsend-celery check [--max-age S] ...         health check: exit 0 healthy, 1 problems
    suprsend-celery sandbox                         a local SuprSend for development
    suprsend-celery demo                            the whole pipeline on this machine

Settings come from a Celery app: ``-A module:attr`` (as with ``celery -A``), else the
standalone relay ``suprsend_celery.app``, which reads only environment variables
(``SUPRSEND_WORKSPACE_KEY``, ``CELERY_BROKER_URL``, ...). Exit status: 0 success,
1 error (a configuration problem or an unreachable Redis, printed without a
traceback), 2 usage error.
"""

from __future__ import annotations

from collections.abc import Sequence

# Importing the verb modules registers their commands on the group.
from . import buffer_verbs, dead_letters, dev, monitoring  # noqa: F401
from .base import cli

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``suprsend-celery``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="suprsend-celery")
