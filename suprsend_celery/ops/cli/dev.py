"""``sandbox`` and ``demo``: the development tools, imported only when their verb runs."""

from __future__ import annotations

import sys
import time

import click

from .base import clean_errors, cli

__all__ = ["demo", "sandbox"]


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="Port; 0 picks a free one.",
)
@click.option("--workspace-key", help="Default: $SUPRSEND_WORKSPACE_KEY or a sandbox key.")
@click.option("--workspace-secret", help="Default: $SUPRSEND_WORKSPACE_SECRET or a sandbox one.")
@click.option("--workspace-uid", help="API-key mode: $SUPRSEND_WORKSPACE_UID or a sandbox UID.")
@click.option("--api-key", help="API-key mode: $SUPRSEND_API_KEY or a sandbox key.")
@click.option("-v", "--verbose", is_flag=True, help="Log every request.")
def sandbox(
    host: str,
    port: int,
    workspace_key: str | None,
    workspace_secret: str | None,
    workspace_uid: str | None,
    api_key: str | None,
    verbose: bool,
) -> None:
    """Run a local SuprSend event API (both auth modes, idempotency, fault plans)."""
    import logging

    from ...dev.sandbox import serve

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    code = serve(
        host, port, workspace_key, workspace_secret, workspace_uid=workspace_uid, api_key=api_key
    )
    if code:
        sys.exit(code)


@cli.command()
@click.option(
    "--events",
    "count",
    type=click.IntRange(min=10, max=100_000),
    default=300,
    show_default=True,
    help="How many events to send (half direct, half buffered).",
)
@click.option("--no-faults", is_flag=True, help="Do not inject failures into the sandbox.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=5),
    default=120.0,
    show_default=True,
    help="Give up waiting for delivery after this many seconds.",
)
@clean_errors
def demo(count: int, no_faults: bool, timeout: float) -> None:
    """Run the whole pipeline locally: Redis, sandbox, worker with beat, events both ways."""
    from ...dev.demo import run_demo

    started = time.monotonic()
    code = run_demo(events=count, faults=not no_faults, timeout=timeout)
    click.echo(f"demo finished in {time.monotonic() - started:.1f}s")
    if code:
        sys.exit(code)
