"""A ``track_event`` message: what it carries, when it may run, and what Celery may show
of it (its event name, distinct_id and keys; never the record).

Celery shows a task's arguments in more places than its ``argsrepr``/``kwargsrepr``:
``inspect active/scheduled/reserved`` (``Request.info`` returns the raw arguments),
task events sent by the worker, the request a failed or killed task stores with
``result_extended``, and ``inspect conf`` (Celery masks settings named like secrets,
not a password inside ``suprsend_redis_url``). ``RedactedRequest``, the worker's
request class for ``track_event`` (``Task.Request``, Celery's documented hook), and
the ``conf`` inspect command registered here close each of them. ``celery report``
(what users paste into bug reports) prints ``app.conf.humanize()``: ``mask_conf``
makes every ``suprsend_*`` URL setting print with its password masked there too.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from functools import cached_property
from typing import Any

from celery.app.task import Context
from celery.signals import import_modules
from celery.utils.serialization import strtobool
from celery.worker import control

from ..delivery.routing import mask_url
from ..events.model import AcceptedRecord
from ..pipeline.runtime import runtime_of
from .acks import AckRequest

__all__ = [
    "RECORD",
    "MaskedSetting",
    "RedactedRequest",
    "delay_of",
    "expires_in",
    "is_prepared",
    "mask_conf",
    "meta_of",
    "redacted",
    "redacted_call",
    "warn_if_no_broker",
]

logger = logging.getLogger(__name__)

RECORD = "record"
"""The one keyword argument of a published ``track_event``: the finished record."""


def is_prepared(args: Any, kwargs: Any) -> bool:
    """Whether a call's arguments are a finished record (what ``delay()`` publishes)."""
    return (
        not args
        and isinstance(kwargs, dict)
        and len(kwargs) == 1
        and isinstance(kwargs.get(RECORD), str)
        and kwargs[RECORD].startswith("{")
    )


def delay_of(options: dict[str, Any]) -> float:
    """Seconds until a message published with these options may run (countdown/eta)."""
    countdown = options.get("countdown")
    if isinstance(countdown, (int, float)) and not isinstance(countdown, bool):
        return max(0.0, float(countdown))
    eta = options.get("eta")
    if isinstance(eta, datetime.datetime):
        now = datetime.datetime.now(eta.tzinfo or None)
        return max(0.0, (eta - now).total_seconds())
    return 0.0


def expires_in(options: dict[str, Any]) -> float | None:
    """Seconds until a message published with these options expires (``expires``: seconds,
    a datetime or, from a running task's request, an ISO string), or None."""
    expires = options.get("expires")
    if isinstance(expires, str):
        try:
            expires = datetime.datetime.fromisoformat(expires)
        except ValueError:
            return None
    if isinstance(expires, datetime.datetime):
        now = datetime.datetime.now(expires.tzinfo or None)
        return max(0.0, (expires - now).total_seconds())
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        return max(0.0, float(expires))
    return None


def warn_if_no_broker(app: Any) -> None:
    """Say once per app that ``track_event`` goes to Celery's default broker
    (``amqp://localhost``) because none is configured: a silent surprise otherwise."""
    conf = app.conf
    runtime = runtime_of(app)
    if conf.broker_url or conf.broker_write_url or runtime.warned_no_broker:
        return
    runtime.warned_no_broker = True
    logger.warning(
        "track_event: the Celery app %r has no broker_url (nor CELERY_BROKER_URL), so its "
        "tasks go to Celery's default, amqp://localhost; set broker_url if that is not "
        "meant",
        app.main,
    )


_NO_META = {"event": None, "distinct_id": None, "idempotency_key": None}


def redacted(record: AcceptedRecord) -> dict[str, Any]:
    return {
        "event": record.event_name,
        "distinct_id": record.distinct_id,
        "idempotency_key": record.idempotency_key,
    }


def meta_of(text: str) -> dict[str, Any]:
    """The shown fields of a serialised record (all None if it is not JSON)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return dict(_NO_META)
    if not isinstance(parsed, dict):
        return dict(_NO_META)
    return {
        "event": parsed.get("event"),
        "distinct_id": parsed.get("distinct_id"),
        "idempotency_key": parsed.get("$idempotency_key"),
    }


def redacted_call(args: Any, kwargs: Any, task_id: str | None) -> dict[str, Any]:
    """The shown fields of a task message: a prepared record, or the raw arguments of a
    call published by name (whose key, if the caller gave none, is the task id)."""
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    record = kwargs.get(RECORD)
    if isinstance(record, str):
        return meta_of(record)
    args = list(args) if isinstance(args, (list, tuple)) else []
    named = dict(zip(("distinct_id", "event_name"), args, strict=False))
    key = kwargs.get("idempotency_key") or task_id
    return {
        "event": _shown(kwargs.get("event_name", named.get("event_name"))),
        "distinct_id": _shown(kwargs.get("distinct_id", named.get("distinct_id"))),
        "idempotency_key": _shown(key),
    }


def _shown(value: Any) -> str | None:
    return value if isinstance(value, str) else (None if value is None else repr(value)[:80])


class RedactedRequest(AckRequest):
    """``track_event``'s request in the worker, showing only ``redacted_call`` (and
    acknowledged until the broker takes it: ``acks``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Task events (task-received) and repr() read these.
        self._argsrepr = "()"
        self._kwargsrepr = repr(self.shown)

    @cached_property
    def shown(self) -> dict[str, Any]:
        return redacted_call(self._args, self._kwargs, self.id)

    def info(self, safe: bool = False) -> dict[str, Any]:
        """``inspect active/scheduled/reserved``: never the raw arguments."""
        info: dict[str, Any] = super().info(safe=True)
        if not safe:
            info["args"], info["kwargs"] = [], dict(self.shown)
        return info

    @cached_property
    def _context(self) -> Context:
        """The request Celery stores with a failure (``result_extended``) and hands to
        ``task_failure``/``task_revoked``: redacted. ``suprsend_record`` keeps the record
        for our own ``task_revoked`` handler, which settles its journal entry."""
        context: Context = super()._context
        record = self._kwargs.get(RECORD) if isinstance(self._kwargs, dict) else None
        context.suprsend_record = record if isinstance(record, str) else None
        context.args, context.kwargs = [], dict(self.shown)
        return context


_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*:/", re.IGNORECASE)


def _masked(value: Any) -> Any:
    if isinstance(value, str) and _URL_PASSWORD.match(value):
        return mask_url(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return value


_celery_conf = control.Panel.data["conf"]


@control.inspect_command(  # type: ignore[untyped-decorator]
    name="conf",
    args=[("with_defaults", strtobool)],
)
def _conf(state: Any, with_defaults: bool = False, **kwargs: Any) -> Any:
    """Celery's ``inspect conf`` (secrets already masked by name), with the password of
    every URL-valued setting masked too (``suprsend_redis_url``, a result backend...)."""
    return _masked(_celery_conf(state, with_defaults=with_defaults, **kwargs))


class MaskedSetting(str):
    """A ``suprsend_*`` URL setting that prints with its password masked.

    Celery's ``report`` and ``app.conf.humanize()`` mask settings *named* like secrets
    (``suprsend_workspace_secret``, ``suprsend_api_key``) and the broker URL, not a
    password inside ``suprsend_redis_url`` or ``suprsend_proxy_url``. The value is the
    same string (equal, what redis-py connects with); only its ``repr``, which Celery's
    pretty-printer shows, is masked.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_url(str(self)))


def mask_conf(app: Any) -> None:
    """Make every ``suprsend_*`` setting of ``app.conf`` holding a URL with a password
    (``CELERY_SUPRSEND_*`` with Django's namespace too) print masked."""
    conf = app.conf
    for key in list(conf.keys()):
        if not isinstance(key, str) or "suprsend_" not in key.lower():
            continue
        value = conf.get(key)
        if (
            isinstance(value, str)
            and not isinstance(value, MaskedSetting)
            and _URL_PASSWORD.match(value)
            and mask_url(value) != value
        ):
            conf[key] = MaskedSetting(value)


def _mask_quietly(app: Any) -> None:
    try:
        mask_conf(app)
    except Exception:  # printing settings must never stop a worker from starting
        logger.debug("could not mask the suprsend_* settings of %r", app, exc_info=True)


@import_modules.connect  # type: ignore[untyped-decorator]
def _on_import_modules(sender: Any = None, **_: Any) -> None:
    """``celery report``, ``worker`` and ``beat`` import the app's modules first: mask
    its settings then (the loader re-raises a receiver's exception, so none escapes)."""
    if sender is not None:
        _mask_quietly(sender)


def _on_after_configure(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        _mask_quietly(sender)


def _mask_existing_apps() -> None:
    """Apps created before this module was imported: when the app's own module does not
    import suprsend_celery, Celery imports it *during* ``import_modules`` (Django's
    ``django.setup()``, ``conf.imports``), too late for the receiver above. Celery has
    no public list of apps: ``_get_active_apps`` (a WeakSet since Celery 3) is the one
    internal used here. An app not configured yet is masked once its config loads
    (``on_after_configure``, a documented app signal), never loaded early by us."""
    from celery._state import _get_active_apps

    for app in list(_get_active_apps()):
        if app.configured:
            _mask_quietly(app)
        else:
            app.on_after_configure.connect(_on_after_configure, weak=False)


_mask_existing_apps()
