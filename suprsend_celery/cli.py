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

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click
import redis

from . import defaults
from .buffer import RedisBuffer
from .events import accepted_before
from .exceptions import SuprsendCeleryError
from .flusher import FlushReport
from .policy import DeadLetter
from .redis_policy import describe_redis, refusal

__all__ = ["cli", "main"]

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_APP = "suprsend_celery.app"
_RELAY_REDIS_VARIABLES = ("SUPRSEND_REDIS_URL", "CELERY_BROKER_URL")


class _AppRef:
    """The Celery app named by ``-A``, imported on first use (``sandbox`` never needs it)."""

    def __init__(self, spec: str | None, app: Any = None) -> None:
        self.spec = spec or DEFAULT_APP
        #: The standalone relay, configured by environment variables alone.
        self.is_default = spec is None and app is None
        self._app = app

    def get(self) -> Any:
        if self._app is None:
            from celery import Celery
            from celery.app.utils import find_app

            try:
                app = find_app(self.spec)
            except (ImportError, AttributeError) as exc:
                raise click.ClickException(
                    f"cannot load the Celery app {self.spec!r}: {exc}"
                ) from None
            if not isinstance(app, Celery):
                raise click.ClickException(
                    f"{self.spec!r} is a {type(app).__name__}, not a Celery app"
                )
            self._app = app
        return self._app


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _clean_errors(func: _F) -> _F:
    """Turn configuration and Redis errors into a one-line message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SuprsendCeleryError as exc:
            _fail(str(exc))
        except redis.RedisError as exc:
            _fail(f"Redis is not reachable or refused the command: {exc}")

    return wrapper  # type: ignore[return-value]


def _app(ctx: click.Context) -> Any:
    ref: _AppRef = ctx.find_object(_AppRef)  # type: ignore[assignment]
    return ref.get()


def _buffer(ctx: click.Context) -> RedisBuffer:
    from .runtime import get_buffer

    return get_buffer(_app(ctx))


def _source(buffer: RedisBuffer) -> dict[str, str]:
    """Which Redis (password masked) and key prefix a verb read: every verb says so."""
    return {"redis": describe_redis(buffer.redis), "key_prefix": buffer.prefix}


def _target(buffer: RedisBuffer) -> str:
    source = _source(buffer)
    return f"Redis {source['redis']}, key prefix {source['key_prefix']}"


def _say_target(ctx: click.Context, buffer: RedisBuffer, verb: str) -> None:
    """``<verb> Redis redis://host:port/db, key prefix P`` (and whether it is a guess)."""
    ref: _AppRef = ctx.find_object(_AppRef)  # type: ignore[assignment]
    click.echo(f"{verb} {_target(buffer)}{_default_note(ref)}")


def _default_note(ref: _AppRef) -> str:
    if not ref.is_default or any(os.environ.get(v) for v in _RELAY_REDIS_VARIABLES):
        return ""
    return " (a guess: no -A given, and neither SUPRSEND_REDIS_URL nor CELERY_BROKER_URL is set)"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


# -- the group ---------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_spec",
    metavar="MODULE[:ATTR]",
    help=f"Celery app to read settings from, as for `celery -A` (default: {DEFAULT_APP}, "
    "configured from environment variables).",
)
@click.version_option(package_name="suprsend-celery", prog_name="suprsend-celery")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None) -> None:
    """Operate suprsend-celery: buffer status, flushing, dead letters, sandbox, demo."""
    preset = ctx.obj
    if isinstance(preset, _AppRef):
        return
    # An app object passed by the caller (``cli.main(obj=app)``, tests) wins over -A.
    ctx.obj = _AppRef(app_spec, app=preset)


# -- status ------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@_clean_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the buffer: pending, in flight, retries, dead letters, breaker."""
    buffer = _buffer(ctx)
    if not as_json:
        _say_target(ctx, buffer, "read")
    figures: dict[str, Any] = {**_source(buffer), **buffer.stats()}
    breaker = buffer.breaker()
    figures["breaker_reason"] = breaker["reason"] if figures["breaker"] != "closed" else ""
    figures["breaker_retry_in"] = breaker["retry_in"] if figures["breaker"] != "closed" else 0.0
    memory = buffer.memory_info()
    figures["maxmemory_policy"] = memory.get("maxmemory_policy")
    figures["maxmemory"] = memory.get("maxmemory")
    figures["used_memory"] = memory.get("used_memory")
    if as_json:
        _echo_json(figures)
        return
    rows = [
        ("pending", figures["pending"]),
        ("in flight", figures["in_flight"]),
        ("scheduled retries", figures["scheduled_retries"]),
        ("dead letters", figures["dead"]),
        ("sent past 24 h", figures["sent_past_dedup_window"]),
        ("oldest age", f"{figures['oldest_age_seconds']:.1f}s"),
        ("breaker", figures["breaker"]),
    ]
    if figures["breaker"] != "closed":
        rows.append(("  reason", figures["breaker_reason"] or "-"))
        rows.append(("  next probe in", f"{figures['breaker_retry_in']:.1f}s"))
    rows.append(("maxmemory-policy", _policy_text(figures["maxmemory_policy"])))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label:<{width}}  {value}")


def _policy_text(policy: str | None) -> str:
    if policy is None:
        return "unknown (INFO refused)"
    if refusal(policy, "") is not None:
        return f"{policy} (evicts keys: buffer_event refuses it; set noeviction)"
    return policy


# -- flush -------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="Stop after this many seconds even if records remain.",
)
@click.pass_context
@_clean_errors
def flush(ctx: click.Context, timeout: float) -> None:
    """Drain the buffer now, in the foreground, with a progress bar.

    Sends what is pending (and retries that are due); retries scheduled for later
    stay scheduled. Exits 1 if the circuit breaker stopped the drain.
    """
    from .runtime import get_flusher

    flusher = get_flusher(_app(ctx))
    _say_target(ctx, flusher.buffer, "flushing")
    total = flusher.buffer.remaining()
    done = 0
    with click.progressbar(
        length=max(total, 1), label="flushing", show_pos=True, file=sys.stderr
    ) as bar:

        def progress(report: FlushReport) -> None:
            nonlocal done
            handled = report.sent + report.retry_scheduled + report.dead_lettered + report.returned
            step = min(handled, total) - done
            if step > 0:
                bar.update(step)
                done += step

        report = flusher.run(timeout, progress=progress)
        if report.remaining == 0:
            bar.update(max(total, 1) - done)
    click.echo(
        f"sent {report.sent}, retry scheduled {report.retry_scheduled}, "
        f"dead-lettered {report.dead_lettered}, remaining {report.remaining} "
        f"({report.requests} requests in {report.seconds:.2f}s)"
    )
    if report.breaker == "open":
        reason = flusher.buffer.breaker()["reason"]
        _fail(f"the circuit breaker is open, so flushing stopped: {reason or 'SuprSend failing'}")


# -- dead letters ------------------------------------------------------------------------


@cli.group("dead-letters")
def dead_letters() -> None:
    """Inspect, re-send or drop events that could not be delivered."""


def _letter_row(letter: DeadLetter, show_properties: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "idempotency_key": letter.idempotency_key,
        "event": letter.event,
        "error": letter.error,
        "status_code": letter.status_code,
        "attempts": letter.attempts,
        "age_seconds": round(letter.age_seconds, 1),
        "source": letter.source,
    }
    if show_properties:
        try:
            record = letter.record_json()
        except ValueError:
            record = {}
        row["distinct_id"] = record.get("distinct_id")
        row["properties"] = record.get("properties")
    return row


@dead_letters.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--show-properties",
    is_flag=True,
    help="Also show distinct_id and properties (may contain personal data).",
)
@click.pass_context
@_clean_errors
def list_dead_letters(ctx: click.Context, limit: int, as_json: bool, show_properties: bool) -> None:
    """List dead letters, newest first: key, event, error, attempts, age."""
    buffer = _buffer(ctx)
    if not as_json:
        _say_target(ctx, buffer, "read")
    letters = buffer.dead_letters(limit=limit)
    rows = [_letter_row(letter, show_properties) for letter in letters]
    if as_json:
        _echo_json({**_source(buffer), "dead_letters": rows})
        return
    total = buffer.stats()["dead"]
    if not rows:
        click.echo("no dead letters")
        return
    header = ("KEY", "EVENT", "ATTEMPTS", "AGE")
    cells = [
        (str(r["idempotency_key"]), str(r["event"]), str(r["attempts"]), _age(r["age_seconds"]))
        for r in rows
    ]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]

    def line(values: Sequence[str], last: str) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + "  " + last

    click.echo(line(header, "ERROR"))
    for r, c in zip(rows, cells, strict=True):
        click.echo(line(c, r["error"]))
        if show_properties:
            props = json.dumps(r["properties"], ensure_ascii=False)
            click.echo(f"    distinct_id={r['distinct_id']!s} properties={props}")
    if total > len(rows):
        click.echo(f"({len(rows)} of {total} shown; use --limit)")


def _past_window(buffer: RedisBuffer, selection: Sequence[str] | None) -> int:
    """Dead letters (all, or these keys) accepted over 24 h ago: SuprSend no longer
    deduplicates their keys if they are sent again."""
    wanted = None if selection is None else set(selection)
    letters = buffer.dead_letters(limit=max(1, buffer.stats()["dead"]))
    records = [d.record for d in letters if wanted is None or (d.idempotency_key or "") in wanted]
    return len(accepted_before(records, int((time.time() - defaults.DEDUP_WINDOW) * 1000)))


def _selection(keys: Sequence[str], all_: bool) -> list[str] | None:
    if keys and all_:
        raise click.UsageError("give either --key (repeatable) or --all, not both")
    if not keys and not all_:
        raise click.UsageError("give --key K (repeatable) or --all")
    return None if all_ else list(keys)


_KEY_OPTION = click.option(
    "--key", "keys", multiple=True, metavar="KEY", help="Idempotency key of a dead letter."
)
_ALL_OPTION = click.option("--all", "all_", is_flag=True, help="Every dead letter.")


@dead_letters.command("requeue")
@_KEY_OPTION
@_ALL_OPTION
@click.pass_context
@_clean_errors
def requeue_dead_letters(ctx: click.Context, keys: tuple[str, ...], all_: bool) -> None:
    """Put dead letters back in the buffer (attempts reset); the next flush sends them."""
    selection = _selection(keys, all_)
    buffer = _buffer(ctx)
    _say_target(ctx, buffer, "requeueing from")
    late = _past_window(buffer, selection)
    moved = buffer.requeue_dead_letters(selection)
    click.echo(f"requeued {moved} dead letter(s)")
    if late:
        click.echo(
            f"{late} of them were first accepted more than 24 h ago: SuprSend deduplicates "
            "a key for 24 h only, so one it already processed will be processed again"
        )
    if selection is not None and moved < len(set(selection)):
        click.echo(f"{len(set(selection)) - moved} key(s) not found among the dead letters")


@dead_letters.command("purge")
@_KEY_OPTION
@_ALL_OPTION
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@_clean_errors
def purge_dead_letters(ctx: click.Context, keys: tuple[str, ...], all_: bool, yes: bool) -> None:
    """Drop dead letters for good (asks first unless --yes)."""
    selection = _selection(keys, all_)
    buffer = _buffer(ctx)
    _say_target(ctx, buffer, "purging from")
    what = "every dead letter" if selection is None else f"{len(set(selection))} dead letter(s)"
    if not yes:
        held = buffer.stats()["dead"]
        click.confirm(f"Drop {what} ({held} held)? This cannot be undone", abort=True)
    removed = buffer.purge_dead_letters(selection)
    click.echo(f"purged {removed} dead letter(s)")


# -- monitoring --------------------------------------------------------------------------


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
@_clean_errors
def metrics(ctx: click.Context, host: str, port: int) -> None:
    """Serve Prometheus metrics read from Redis at /metrics (needs the prometheus extra)."""
    try:
        from .metrics import serve
    except ImportError as exc:
        _fail(str(exc))
    buffer = _buffer(ctx)
    _say_target(ctx, buffer, "reading")
    serve(_app(ctx), host, port, ready=lambda url: click.echo(f"serving {url}"))


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
@_clean_errors
def check(
    ctx: click.Context,
    max_age: float | None,
    max_dead: int | None,
    breaker_open: float | None,
    timeout: float,
) -> None:
    """Health check: exit 0 when healthy, else 1 with one line per problem.

    Always checks that Redis answers and, while records wait, that a flush run
    happened within 3 flush intervals (a dead beat or no worker); the options add
    limits on the oldest record, dead letters and how long the breaker stays open.
    """
    from .config import get_settings, mask_url
    from .health import Thresholds, quick_buffer
    from .health import check as run_check

    settings = get_settings(_app(ctx))
    limits = Thresholds(settings.flush_interval, max_age, max_dead, breaker_open)
    try:
        # Connecting asks Redis whether it runs a cluster: it may fail already.
        buffer = quick_buffer(settings, timeout)
    except redis.RedisError as exc:
        url = mask_url(settings.require_redis_url())
        click.echo(f"checked Redis {url}, key prefix {settings.key_prefix}")
        problems = [f"Redis unreachable: {type(exc).__name__}: {exc}"]
    else:
        _say_target(ctx, buffer, "checked")
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


# -- sandbox and demo --------------------------------------------------------------------


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

    from .sandbox import serve

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
@_clean_errors
def demo(count: int, no_faults: bool, timeout: float) -> None:
    """Run the whole pipeline locally: Redis, sandbox, worker with beat, events both ways."""
    from .demo import run_demo

    started = time.monotonic()
    code = run_demo(events=count, faults=not no_faults, timeout=timeout)
    click.echo(f"demo finished in {time.monotonic() - started:.1f}s")
    if code:
        sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``suprsend-celery``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="suprsend-celery")


if __name__ == "__main__":  # pragma: no cover - python -m suprsend_celery.cli
    main()
