"""``celery -A proj suprsend <verb>``: our verbs as a Celery sub-command, and what makes
every ``celery`` worker know our tasks without ``app.conf.imports``.

The ``celery`` program loads every ``celery.commands`` entry point as it starts
(through ``click-plugins``, before it loads the ``-A`` app). Ours, declared in
``pyproject.toml``, names ``suprsend`` here; importing this module imports
``suprsend_celery.tasks``, whose shared tasks (``track_event``, ``flush_buffer``)
Celery adds to every app as it finalizes, and whose beat hook puts ``flush_buffer`` on
the schedule of an app configured for SuprSend. So ``celery -A proj worker`` and
``celery -A proj beat``, in an environment where suprsend-celery is installed, work
even when nothing in ``proj`` imports suprsend_celery: the mistake that made a worker
log "Received unregistered task of type 'suprsend_celery.track_event'", with the
message body, properties included (Celery has no hook to stop that dump: its
``task_unknown`` signal is sent after the line is logged), cannot happen there.

A worker started without the ``celery`` program (``app.worker_main`` aside, which
goes through it) still needs ``app.conf.imports = ("suprsend_celery.tasks",)`` or an
``import suprsend_celery`` in the app's module; ``check`` and ``status`` show the
journal of direct events no worker ran.
"""

from __future__ import annotations

from typing import Any

import click

from .. import tasks as _tasks  # noqa: F401  (registers the shared tasks: see above)
from .cli import cli
from .cli.base import AppRef

__all__ = ["suprsend"]


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def suprsend(ctx: click.Context, args: tuple[str, ...]) -> None:
    """suprsend-celery's verbs on this app (status, check, flush, dead-letters, metrics);
    `celery -A proj suprsend --help` lists them."""
    app: Any = getattr(ctx.obj, "app", None)  # Celery's CLIContext: the -A app
    cli.main(args=list(args), prog_name="celery suprsend", obj=AppRef(None, app=app))
