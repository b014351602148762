"""What every verb shares: the app named by ``-A``, the Redis it reads, clean errors."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import redis

from ...buffer.eviction import describe_redis
from ...buffer.protocol import Buffer
from ...exceptions import SuprsendCeleryError
from ...pipeline.settings import Settings, get_settings
from ..health import quick_buffer

__all__ = [
    "AppRef",
    "age_text",
    "app_of",
    "buffer_of",
    "clean_errors",
    "cli",
    "echo_json",
    "fail",
    "say_target",
    "settings_of",
    "source_of",
]

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_APP = "suprsend_celery.app"
_RELAY_REDIS_VARIABLES = ("SUPRSEND_REDIS_URL", "CELERY_BROKER_URL")


class AppRef:
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


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def clean_errors(func: _F) -> _F:
    """Turn configuration and Redis errors into a one-line message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SuprsendCeleryError as exc:
            fail(str(exc))
        except redis.RedisError as exc:
            fail(f"Redis is not reachable or refused the command: {exc}")

    return wrapper  # type: ignore[return-value]


def app_of(ctx: click.Context) -> Any:
    ref: AppRef = ctx.find_object(AppRef)  # type: ignore[assignment]
    return ref.get()


def settings_of(ctx: click.Context) -> Settings:
    """The app's settings for verbs that only read or move records in Redis: no
    workspace credentials needed (a monitoring sidecar is not given the secret)."""
    return get_settings(app_of(ctx), require_credentials=False)


def buffer_of(ctx: click.Context) -> Buffer:
    """The buffer, from the Redis-only settings (``flush`` uses the app's flusher)."""
    return quick_buffer(settings_of(ctx), timeout=None)


def source_of(buffer: Buffer) -> dict[str, str]:
    """Which Redis (password masked) and key prefix a verb read: every verb says so."""
    return {"redis": describe_redis(buffer.redis), "key_prefix": buffer.prefix}


def _target(buffer: Buffer) -> str:
    source = source_of(buffer)
    return f"Redis {source['redis']}, key prefix {source['key_prefix']}"


def say_target(ctx: click.Context, buffer: Buffer, verb: str) -> None:
    """``<verb> Redis redis://host:port/db, key prefix P`` (and whether it is a guess)."""
    ref: AppRef = ctx.find_object(AppRef)  # type: ignore[assignment]
    click.echo(f"{verb} {_target(buffer)}{_default_note(ref)}")


def _default_note(ref: AppRef) -> str:
    if not ref.is_default or any(os.environ.get(v) for v in _RELAY_REDIS_VARIABLES):
        return ""
    return " (a guess: no -A given, and neither SUPRSEND_REDIS_URL nor CELERY_BROKER_URL is set)"


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


def age_text(seconds: float) -> str:
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
    if isinstance(preset, AppRef):
        return
    # An app object passed by the caller (``cli.main(obj=app)``, tests) wins over -A.
    ctx.obj = AppRef(app_spec, app=preset)
