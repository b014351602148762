"""``metrics`` and ``check``: a Prometheus exporter and a health check for probes and cron."""

from __future__ import annotations

import sys

import click
import redis

from .base import app_of, buffer_of, clean_errors, cli, fail, say_target, settings_of

__all__ = ["check", "metrics"]


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=9808,
    show_default=True,
    help="Port; 0 picks a free one.",
)
@click.pass_context
@clean_errors
def metrics(ctx: click.Context, host: str, port: int) -> None:
    """Serve Prometheus metrics read from Redis at /metrics (needs the prometheus extra)."""
    try:
        from ..exporter import serve
    except ImportError as exc:
        fail(str(exc))
    buffer = buffer_of(ctx)
    say_target(ctx, buffer, "reading")
    serve(app_of(ctx), host, port, ready=lambda url: click.echo(f"serving {url}"))


@cli.command()
@click.option("--max-age", type=click.FloatRange(min=0), help="Oldest record allowed, seconds.")
@click.option("--max-dead", type=click.IntRange(min=0), help="Dead letters allowed.")
@click.option(
    "--breaker-open", type=click.FloatRange(min=0), help="Seconds the breaker may stay open."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Give up on Redis after this many seconds.",
)
@click.pass_context
@clean_errors
def check(
    ctx: click.Context,
    max_age: float | None,
    max_dead: int | None,
    breaker_open: float | None,
    timeout: float,
) -> None:
    """Health check: exit 0 when healthy, else 1 with one line per problem.

    Always checks that Redis answers, that it does not evict keys, that a flush run
    happened within 3 flush intervals while records wait (a dead beat or no worker),
    and that no track_event is overdue in the journal (workers that do not know our
    tasks); the options add limits on the oldest record, dead letters and how long the
    breaker stays open.
    """
    from ...delivery.routing import mask_url
    from ..health import Thresholds, quick_buffer
    from ..health import check as run_check

    settings = settings_of(ctx)
    limits = Thresholds(settings.flush_interval, max_age, max_dead, breaker_open)
    try:
        # Connecting asks Redis whether it runs a cluster: it may fail already.
        buffer = quick_buffer(settings, timeout)
    except redis.RedisError as exc:
        url = mask_url(settings.require_redis_url())
        click.echo(f"checked Redis {url}, key prefix {settings.key_prefix}")
        problems = [f"Redis unreachable: {type(exc).__name__}: {exc}"]
    else:
        say_target(ctx, buffer, "checked")
        try:
            problems = run_check(buffer, limits)
        except redis.RedisError as exc:
            problems = [f"Redis unreachable: {type(exc).__name__}: {exc}"]
        finally:
            buffer.redis.close()
    for line in problems:
        click.echo(f"PROBLEM: {line}")
    if problems:
        sys.exit(1)
    click.echo("healthy")
