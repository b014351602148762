"""Settings: Celery config → environment → default, validated once per app.

Every key has the ``suprsend_`` prefix. ``app.conf.suprsend_workspace_key`` wins, then the
environment variable ``SUPRSEND_WORKSPACE_KEY``, then the default. With Django's
``app.config_from_object("django.conf:settings", namespace="CELERY")`` the Celery keys
come from ``CELERY_SUPRSEND_*`` settings. A bad value raises ``ConfigurationError``
naming the key, at the first use rather than deep inside a worker.

Settings are read once per process and cached on the app: ``reset_settings(app)``
reads them again. A ``suprsend_*`` key (or ``SUPRSEND_*`` environment variable) that
is not a setting, e.g. ``suprsend_dryrun``, is ignored, so it is reported once per
process as a WARNING log line naming the nearest setting; a logged warning rather
than a Python warning, so users' ``filterwarnings = error`` test suites keep running.

Operations that only read Redis (``status``, ``check``, ``metrics``, dead letters)
load ``get_settings(app, require_credentials=False)``: the keys only sending needs
(credentials, ``before_send``, proxy, CA bundle) are neither read nor required.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

from celery import current_app

from .. import defaults
from ..delivery.credentials import Credentials
from ..delivery.routing import mask_url
from ..events.records import env_field
from ..exceptions import ConfigurationError
from .hooks import BeforeSend, load_hook

__all__ = [
    "Settings",
    "get_settings",
    "load_settings",
    "report_unknown",
    "reset_settings",
    "resolve_app",
    "unknown_settings",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_MISSING = object()
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "valkey://", "valkeys://", "sentinel://")


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{key} must be a non-empty string; got {_redact(key, value)}")
    return value.strip()


#: Values the README and docs show as examples: never a real credential.
_EXAMPLES = frozenset({"WSKEY_...", "WSSECRET_...", "<workspace UID>", "<api key>"})


def _credential(key: str, value: object) -> str:
    """A credential, refusing an obvious placeholder copied from an example."""
    text = _text(key, value)
    if text in _EXAMPLES or "..." in text or "\u2026" in text or text[:1] + text[-1:] == "<>":
        shown = _redact(key, value)
        raise ConfigurationError(
            f"{key} is a placeholder ({shown}), not a real value: set the real one in "
            f"app.conf or in the environment variable {key.upper()} (a value in app.conf, "
            "even a placeholder, wins over the environment)"
        )
    return text


def _redact(key: str, value: object) -> str:
    if ("secret" in key or "api_key" in key) and value:
        return repr("<hidden>")
    return repr(mask_url(value) if isinstance(value, str) else value)


def _number(
    kind: Callable[[Any], _T], low: float, high: float | None = None
) -> Callable[[str, object], _T]:
    def parse(key: str, value: object) -> _T:
        if isinstance(value, bool):
            raise ConfigurationError(f"{key} must be a number; got {value!r}")
        try:
            number = kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{key} must be a number; got {value!r}") from None
        finite = not isinstance(number, float) or math.isfinite(number)
        if not finite or number < low or (high is not None and number > high):  # type: ignore[operator]
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigurationError(f"{key} must be {bound}; got {value!r}")
        return number

    return parse


def _url(key: str, value: object) -> str:
    text = _text(key, value)
    try:
        host = urlsplit(text).hostname
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        host = None
    if not text.startswith(("http://", "https://")) or not host:
        raise ConfigurationError(f"{key} must be an http(s) URL; got {value!r}")
    return text if text.endswith("/") else text + "/"


def _redis_url(key: str, value: object) -> str:
    text = _text(key, value)
    if not text.startswith(_REDIS_SCHEMES):
        raise ConfigurationError(
            f"{key} must be a redis:// , rediss:// , unix:// or sentinel:// URL; "
            f"got {_redact(key, value)}"
        )
    return text


def _flag(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ConfigurationError(f"{key} must be true or false (or 1 / 0); got {value!r}")


def _proxy_url(key: str, value: object) -> str:
    text = _text(key, value)
    try:
        host = urlsplit(text).hostname
    except ValueError:
        host = None
    if not text.startswith(("http://", "https://")) or not host:
        raise ConfigurationError(
            f"{key} must be an http:// or https:// proxy URL; got {_redact(key, text)}"
        )
    return text


def _names(key: str, value: object) -> tuple[str, ...]:
    """A list of names, or one string of them separated by commas (an environment variable)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigurationError(f"{key} must be a list of names; got {value!r}")
    names = tuple(_text(key, item) for item in items if not isinstance(item, str) or item.strip())
    if not names:
        raise ConfigurationError(f"{key} must name at least one; got {value!r}")
    return names


def _ca_bundle(key: str, value: object) -> str:
    text = _text(key, value)
    if not os.path.exists(text):
        raise ConfigurationError(f"{key} must be a CA bundle file or directory; {text!r} not found")
    return text


@dataclass(frozen=True)
class Settings:
    """The validated ``suprsend_*`` settings of one Celery app."""

    workspace_key: str | None = None
    workspace_secret: str | None = None
    #: API-key (Bearer) mode, instead of key + secret.
    workspace_uid: str | None = None
    api_key: str | None = None
    base_url: str = defaults.BASE_URL
    redis_url: str | None = None
    key_prefix: str = defaults.KEY_PREFIX
    buffer_max_length: int = defaults.BUFFER_MAX_LENGTH
    flush_interval: float = defaults.FLUSH_INTERVAL
    flush_batch_size: int = defaults.FLUSH_BATCH_SIZE
    max_retries: int = defaults.MAX_RETRIES
    retry_backoff_max: float = defaults.RETRY_BACKOFF_MAX
    request_timeout: float = defaults.REQUEST_TIMEOUT
    max_event_bytes: int = defaults.MAX_EVENT_BYTES
    #: Bulk requests in flight to start from (adaptive), or always (adaptation off).
    flush_concurrency: int = defaults.FLUSH_CONCURRENCY
    #: The adaptive limit's ceiling: requests in flight for all of a buffer's flushers.
    flush_concurrency_max: int = defaults.FLUSH_CONCURRENCY_MAX
    #: Adapt requests in flight to the API's latency and refusals.
    flush_concurrency_adaptive: bool = defaults.FLUSH_CONCURRENCY_ADAPTIVE
    #: Seconds accepting an event may take before it fails (Redis or broker unreachable).
    accept_timeout: float = defaults.ACCEPT_TIMEOUT
    buffer_shards: int = defaults.BUFFER_SHARDS
    buffer_min_replicas: int = defaults.BUFFER_MIN_REPLICAS
    #: How long past its task's next attempt a direct event waits before the flusher sends it.
    journal_grace: float = defaults.JOURNAL_GRACE
    #: Seconds a flush run on duty lets a batch fill while records keep arriving.
    flush_linger: float = defaults.FLUSH_LINGER
    #: A beat-started run waits on duty for new records; False: it ends when empty.
    flush_wait: bool = defaults.FLUSH_WAIT
    #: Sentinel's name of the master (``sentinel://`` URLs); else the broker's option.
    redis_master_name: str | None = None
    #: ``broker_transport_options['sentinel_kwargs']``: how to reach the sentinels.
    sentinel_kwargs: dict[str, Any] | None = None
    #: Run once per event at accept time; returns the event or None (drop it).
    before_send: BeforeSend | None = None
    #: Validate and accept as usual, count, send nothing.
    dry_run: bool = False
    proxy_url: str | None = None
    ca_bundle: str | None = None
    #: The broker's visibility timeout: no retry countdown may reach it (celery#5935).
    visibility_timeout: float = defaults.VISIBILITY_TIMEOUT
    #: Django outbox: rows held before ``outbox_event`` raises ``OutboxFullError``.
    outbox_max_rows: int = defaults.OUTBOX_MAX_ROWS
    #: Django outbox: the database aliases flush runs relay (a list, or comma-separated).
    outbox_databases: tuple[str, ...] = defaults.OUTBOX_DATABASES

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={_redact(f.name, getattr(self, f.name))}" for f in fields(self)
        )
        return f"Settings({shown})"

    @functools.cached_property
    def credentials(self) -> Credentials:
        """The workspace credentials in force, in whichever mode is configured."""
        if self.api_key is not None:
            return Credentials.from_api_key(self.workspace_uid, self.api_key)
        return Credentials.from_key_secret(self.workspace_key, self.workspace_secret)

    @property
    def env(self) -> str:
        """What records carry as ``env``: the workspace key, or the UID in API-key mode."""
        return self.credentials.env

    @functools.cached_property
    def env_size(self) -> int:
        """Bytes the sender adds to each record (its ``env``), counted in the size limit."""
        return len(env_field(self.env))

    @property
    def max_countdown(self) -> float:
        """The longest safe retry delay: the backoff cap, kept under the visibility timeout."""
        return max(1.0, min(self.retry_backoff_max, self.visibility_timeout * 0.8))

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigurationError(
                "suprsend_redis_url is required for buffering when the broker is not Redis"
            )
        return self.redis_url


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "workspace_key": _credential,
    "workspace_secret": _credential,
    "workspace_uid": _credential,
    "api_key": _credential,
    "base_url": _url,
    "redis_url": _redis_url,
    "key_prefix": _text,
    "buffer_max_length": _number(int, 1),
    "flush_interval": _number(float, 0),
    "flush_batch_size": _number(int, 1, defaults.MAX_BULK_RECORDS),
    "max_retries": _number(int, 0),
    "retry_backoff_max": _number(float, 1),
    "request_timeout": _number(float, 0.1),
    "max_event_bytes": _number(int, 256, defaults.MAX_EVENT_BYTES),
    "flush_concurrency": _number(int, 1, defaults.FLUSH_CONCURRENCY_MAX),
    "flush_concurrency_max": _number(int, 1, defaults.FLUSH_CONCURRENCY_CEILING),
    "flush_concurrency_adaptive": _flag,
    "accept_timeout": _number(float, 0.1, defaults.ACCEPT_TIMEOUT_MAX),
    "buffer_shards": _number(int, 1, defaults.BUFFER_SHARDS_MAX),
    "buffer_min_replicas": _number(int, 0, defaults.BUFFER_MIN_REPLICAS_MAX),
    "journal_grace": _number(float, 1, defaults.JOURNAL_GRACE_MAX),
    "flush_linger": _number(float, 0, defaults.FLUSH_LINGER_MAX),
    "flush_wait": _flag,
    "redis_master_name": _text,
    "before_send": load_hook,
    "dry_run": _flag,
    "proxy_url": _proxy_url,
    "ca_bundle": _ca_bundle,
    "outbox_max_rows": _number(int, 1),
    "outbox_databases": _names,
}


def _lookup(conf: Any, name: str) -> object:
    key = f"suprsend_{name}"
    value = conf.get(key, _MISSING) if conf is not None else _MISSING
    if value is _MISSING or value is None:
        value = os.environ.get(key.upper(), _MISSING)
        if value == "":
            value = _MISSING
    return value


def _broker_redis_url(conf: Any) -> str | None:
    broker = conf.get("broker_url") if conf is not None else None
    if isinstance(broker, (list, tuple)):
        broker = broker[0] if broker else None
    if isinstance(broker, str) and broker.startswith(_REDIS_SCHEMES):
        # kombu's failover list: its first URL, or every sentinel of a sentinel:// list
        return broker.strip() if broker.startswith("sentinel://") else broker.split(";")[0].strip()
    return None


def _transport_option(conf: Any, name: str) -> Any:
    """``broker_transport_options[name]``, else the result backend's (Celery's spelling)."""
    for key in ("broker_transport_options", "result_backend_transport_options"):
        options = (conf.get(key) if conf is not None else None) or {}
        if options.get(name) is not None:
            return options[name]
    return None


def _visibility_timeout(conf: Any) -> float:
    options = (conf.get("broker_transport_options") if conf is not None else None) or {}
    value = options.get("visibility_timeout", defaults.VISIBILITY_TIMEOUT)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"broker_transport_options['visibility_timeout'] must be a number; got {value!r}"
        ) from None


#: Keys only sending needs: a Redis-only view neither reads nor requires them.
_SENDING_ONLY = (
    "workspace_key",
    "workspace_secret",
    "workspace_uid",
    "api_key",
    "before_send",
    "proxy_url",
    "ca_bundle",
)


def load_settings(conf: Any, *, require_credentials: bool = True) -> Settings:
    """Read and validate every ``suprsend_*`` key from a Celery config (or None: env only).

    ``require_credentials=False``: the Redis-only view of read-only operations, without
    the keys only sending needs (``_SENDING_ONLY``), so a monitoring sidecar needs no
    workspace secret.
    """
    report_unknown(conf)
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        if not require_credentials and name in _SENDING_ONLY:
            continue
        raw = _lookup(conf, name)
        key = f"suprsend_{name}"
        if raw is not _MISSING:
            values[name] = parse(key, raw)
        elif name == "redis_url":
            values[name] = _broker_redis_url(conf)
        # anything else missing takes the Settings default: defaults live there only
    if require_credentials:
        _check_credentials(values)
    _check_concurrency(values)
    values["visibility_timeout"] = _visibility_timeout(conf)
    if values.get("redis_master_name") is None:
        values["redis_master_name"] = _transport_option(conf, "master_name")
    values["sentinel_kwargs"] = _transport_option(conf, "sentinel_kwargs")
    url = values["redis_url"]
    if url and url.startswith("sentinel://") and not values["redis_master_name"]:
        raise ConfigurationError(
            "a sentinel:// Redis URL needs the master's name: set "
            f"{_where('redis_master_name')}, or broker_transport_options['master_name']"
        )
    return Settings(**values)


def _check_concurrency(values: dict[str, Any]) -> None:
    """The adaptive limit starts at ``flush_concurrency``, so it must fit under the max."""
    start = values.get("flush_concurrency", defaults.FLUSH_CONCURRENCY)
    ceiling = values.get("flush_concurrency_max", defaults.FLUSH_CONCURRENCY_MAX)
    adaptive = values.get("flush_concurrency_adaptive", defaults.FLUSH_CONCURRENCY_ADAPTIVE)
    if adaptive and start > ceiling:
        raise ConfigurationError(
            f"suprsend_flush_concurrency ({start}) is where the adaptive limit starts, so it "
            f"must not exceed suprsend_flush_concurrency_max ({ceiling}); raise the max, "
            "or set suprsend_flush_concurrency_adaptive=false for a fixed concurrency"
        )


# -- unknown keys ------------------------------------------------------------------------

#: ``SUPRSEND_*`` variables that are not settings but are ours: the development Redis
#: server's binary, docker-compose's image tag, the test suite's Redis.
_OTHER_VARIABLES = frozenset(
    {"SUPRSEND_REDIS_SERVER", "SUPRSEND_CELERY_IMAGE_TAG", "SUPRSEND_TEST_REDIS_URL"}
)
_reported: set[str] = set()
_reported_lock = threading.Lock()


def _known() -> list[str]:
    return [f"suprsend_{name}" for name in _PARSERS]


def _conf_keys(conf: Any) -> list[str]:
    try:
        keys = list(conf.keys()) if conf is not None else []
    except (AttributeError, TypeError):
        return []
    return [k for k in keys if isinstance(k, str) and "suprsend_" in k.lower()]


def unknown_settings(conf: Any) -> list[tuple[str, str | None]]:
    """``(where, nearest)`` for each ``suprsend_*`` key of ``conf`` and ``SUPRSEND_*``
    environment variable that no setting reads, e.g. ``("app.conf key suprsend_dryrun",
    "suprsend_dry_run")``; ``nearest`` is None when no setting is close."""
    known = _known()
    keys = _conf_keys(conf)  # first: reading keys loads a pending Celery config
    # Celery reads ``key`` and, under a namespace (Django's "CELERY"), the prefixed key
    # in the prefix's case (``celery.utils.text.match_case``): CELERY_SUPRSEND_*.
    prefix = getattr(conf, "prefix", None) or ""
    case = str.upper if prefix.isupper() else str.lower
    read = set(known) | {case(prefix + k) for k in known if prefix}
    found: list[tuple[str, str | None]] = []
    for key in keys:
        namespaced = bool(prefix) and key.lower().startswith(prefix.lower())
        bare = key[len(prefix) :] if namespaced else key
        if key in read or not bare.lower().startswith("suprsend_"):
            continue  # a setting, or not ours (``MY_SUPRSEND_TEMPLATE``)
        nearest = _nearest(bare.lower(), known)
        if prefix and not namespaced:
            if nearest is None:
                continue  # another setting of a Django project, not a forgotten namespace
            if key.isupper():
                nearest = case(prefix + nearest)
        elif prefix and nearest is not None:
            nearest = case(prefix + nearest)
        found.append((f"app.conf key {key}", nearest))
    variables = {k.upper() for k in known} | _OTHER_VARIABLES
    for name in sorted(os.environ):
        if name.upper().startswith("SUPRSEND_") and name not in variables:
            nearest = _nearest(name.lower(), known)
            found.append((f"environment variable {name}", nearest and nearest.upper()))
    return found


def _nearest(name: str, known: list[str]) -> str | None:
    if name in known:  # the right name, in the wrong place or case
        return name
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return close[0] if close else None


def report_unknown(conf: Any) -> None:
    """Log each unknown ``suprsend_*`` key and ``SUPRSEND_*`` variable, once per process."""
    for where, nearest in unknown_settings(conf):
        with _reported_lock:
            if where in _reported:
                continue
            _reported.add(where)
        hint = (
            f"did you mean {nearest}?"
            if nearest
            else "see the Configuration page (docs/configuration.md)"
        )
        logger.warning(
            "suprsend-celery ignores the %s: no setting has that name; %s",
            where,
            hint,
            extra={"setting": where.rpartition(" ")[2], "nearest": nearest},
        )


_CREDENTIALS = ("workspace_key", "workspace_secret", "workspace_uid", "api_key")
_MODES = (("workspace_key", "workspace_secret"), ("workspace_uid", "api_key"))


def _where(name: str) -> str:
    key = f"suprsend_{name}"
    env = key.upper()
    return f"app.conf.{key} (CELERY_{env} in Django) or the environment variable {env}"


def _check_credentials(values: dict[str, Any]) -> None:
    """Exactly one complete pair: key + secret (HMAC) or workspace UID + API key (Bearer)."""
    given = [[n for n in mode if values.get(n) is not None] for mode in _MODES]
    if all(len(names) == 2 for names in given):
        raise ConfigurationError(
            "set either suprsend_workspace_key + suprsend_workspace_secret or "
            "suprsend_workspace_uid + suprsend_api_key, not both"
        )
    for mode, names in zip(_MODES, given, strict=True):
        if len(names) == 1:
            missing = next(n for n in mode if n not in names)
            raise ConfigurationError(
                f"suprsend_{missing} is required with suprsend_{names[0]}: set {_where(missing)}"
            )
    if not any(given):
        raise ConfigurationError(
            f"suprsend_workspace_key is required: set {_where('workspace_key')}, with "
            "suprsend_workspace_secret (or use API-key mode: suprsend_workspace_uid + "
            "suprsend_api_key)"
        )


def resolve_app(app: Any = None) -> Any:
    """``app``, or Celery's current app: the one way this package finds the app."""
    if app is None:
        # current_app is a proxy; Celery's documented way to get the app behind it
        # (which we cache things on) is this underscore method.
        return current_app._get_current_object()
    return app


def get_settings(app: Any = None, *, require_credentials: bool = True) -> Settings:
    """The app's settings, read once and kept by its runtime (``reset_settings`` forgets them).

    ``require_credentials=False``: the Redis-only view (see ``load_settings``), for
    operations that only read Redis; the full settings when they were loaded already.
    """
    from .runtime import runtime_of  # the runtime imports this module to build settings

    runtime = runtime_of(app)
    return runtime.settings if require_credentials else runtime.redis_settings


def reset_settings(app: Any = None) -> None:
    """Close the app's runtime (connections, sessions, threads) and forget its settings,
    e.g. after changing ``app.conf`` in tests: the next call reads ``app.conf`` again."""
    from .runtime import close_runtime  # the runtime imports this module to build settings

    close_runtime(app)
