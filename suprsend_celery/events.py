"""``Event``, input validation and record building. Pure: no I/O, no Celery.

An event becomes a *record* (the JSON object SuprSend receives) exactly once, when it
is accepted: ``$insert_id``, ``$time`` and ``$idempotency_key`` are fixed there and the
record is serialised there, so every retry, redelivery or crash recovery sends the
same identifiers and SuprSend can skip the repeats.

One field is left out until the record is sent: ``env``, which names the workspace
(its key, or its UID in API-key mode). The sender splices it in from the settings in
force then (``with_env``), so fixing a wrong key or rotating it delivers what was
accepted under the old one. A stored record is the SDK's bytes minus
``, "env": "..."`` before ``"distinct_id"``; records stored with an ``env`` (by 0.1)
have theirs replaced.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from . import defaults
from .exceptions import InvalidEventError

__all__ = [
    "BUILTIN_EVENT_NAMES",
    "AcceptedRecord",
    "Event",
    "accept",
    "env_field",
    "event_from_call",
    "with_env",
]

BUILTIN_EVENT_NAMES = frozenset(
    {
        "$identify",
        "$notification_delivered",
        "$notification_dismiss",
        "$notification_clicked",
        "$app_launched",
        "$user_login",
        "$user_logout",
    }
)
"""SuprSend's own event names, the only ones allowed to use the reserved prefixes."""

_REPR_LIMIT = 80


def _show(value: object) -> str:
    """A short repr for error messages, so a huge value cannot flood a log line."""
    try:
        text = repr(value)
    except ValueError:  # e.g. an int too long to print (sys.get_int_max_str_digits)
        text = f"<{type(value).__name__}>"
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return text


def _is_reserved(name: str) -> bool:
    return name[:1] == "$" or name[:3].lower() == "ss_"


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_default(value: object) -> object:
    """Convert the few non-JSON types users commonly put in properties."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("non-finite Decimal")
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)


# One encoder, built once: the spelling is exactly suprsend-py-sdk's
# json.dumps(obj, ensure_ascii=False), so our bytes and its bytes match.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_json_default)
encode_json = _ENCODER.encode

_DISTINCT_ID = b', "distinct_id": '
_ENV = b', "env": '


def env_field(env: str) -> bytes:
    """``, "env": "<env>"``, the bytes ``with_env`` splices into a stored record."""
    return _ENV + encode_json(env).encode("utf-8")


def with_env(record: bytes, field: bytes) -> bytes:
    """A stored record as sent: ``field`` (from ``env_field``) just before ``distinct_id``.

    No JSON parsing: inside a JSON string every ``"`` is escaped, so the first
    ``, "distinct_id": `` of a record is its key, and an ``, "env": `` before it is an
    ``env`` the record was stored with, which is replaced. Anything else (not one of
    our records) is sent as it is, for the server to judge.
    """
    at = record.find(_DISTINCT_ID)
    if at < 0:
        return record
    old = record.find(_ENV, 0, at)
    return b"".join((record[: at if old < 0 else old], field, record[at:]))


def _check_distinct_id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, uuid.UUID)):
        raise InvalidEventError(
            f"distinct_id must be a str, int or UUID; got {_show(value)}", field="distinct_id"
        )
    try:
        text = str(value).strip()
    except ValueError:  # an int too long to convert to text
        raise InvalidEventError(
            f"distinct_id is too long; got {_show(value)}", field="distinct_id"
        ) from None
    if not text:
        raise InvalidEventError(
            f"distinct_id must not be empty; got {_show(value)}", field="distinct_id"
        )
    return text


def _check_event_name(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidEventError(f"event_name must be a str; got {_show(value)}", field="event_name")
    name = value.strip()
    if len(name) < 2:
        raise InvalidEventError(
            f"event_name must have at least 2 characters; got {_show(value)}", field="event_name"
        )
    if _is_reserved(name) and name not in BUILTIN_EVENT_NAMES:
        raise InvalidEventError(
            "event_name must not start with '$' or 'ss_' (reserved by SuprSend); "
            f"got {_show(value)}",
            field="event_name",
        )
    return name


def _check_idempotency_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEventError(
            f"idempotency_key must be a str; got {_show(value)}", field="idempotency_key"
        )
    key = value.strip()
    if not 1 <= len(key) <= defaults.IDEMPOTENCY_KEY_MAX:
        raise InvalidEventError(
            f"idempotency_key must have 1 to {defaults.IDEMPOTENCY_KEY_MAX} characters "
            f"after trimming; got {_show(value)} ({len(key)} characters)",
            field="idempotency_key",
        )
    return key


def _check_scope_id(field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEventError(f"{field} must be a str; got {_show(value)}", field=field)
    if not value.strip():
        raise InvalidEventError(f"{field} must not be empty; got {_show(value)}", field=field)
    if len(value) > defaults.TENANT_ID_MAX:
        raise InvalidEventError(
            f"{field} must have at most {defaults.TENANT_ID_MAX} characters; "
            f"got {_show(value)} ({len(value)} characters)",
            field=field,
        )
    return value


def _find_bad_value(value: object, path: str, depth: int = 0) -> str | None:
    """Describe the first value json cannot encode, for a precise error message.

    Only types and non-finite numbers are named: property values are the user's data
    and stay out of exception text.
    """
    if depth > 100:
        return f"{path} is nested too deeply (or refers to itself)"
    if isinstance(value, float):
        return (
            None if math.isfinite(value) else f"{path} is {value!r}; NaN and Infinity are not JSON"
        )
    if isinstance(value, Decimal):
        return None if value.is_finite() else f"{path} is Decimal({str(value)!r}); not JSON"
    if isinstance(value, (str, int, bool, type(None), _dt.date, _dt.time, uuid.UUID)):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                return f"{path} has a key of type {type(key).__name__}; keys must be str"
            found = _find_bad_value(item, f"{path}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_bad_value(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    return f"{path} has a value of type {type(value).__name__}, which is not JSON-serialisable"


def _check_properties(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidEventError(
            f"properties must be a dict; got a {type(value).__name__}", field="properties"
        )
    props: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidEventError(
                f"properties keys must be str; got {_show(key)}", field="properties"
            )
        if _is_reserved(key):
            raise InvalidEventError(
                f"properties key {key!r} must not start with '$' or 'ss_' (reserved by SuprSend)",
                field="properties",
            )
        props[key] = item
    return props


def _check_attachment_url(url: object) -> str:
    if not isinstance(url, str):
        raise InvalidEventError(f"attachment url must be a str; got {_show(url)}", field="url")
    text = url.strip()
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        host = ""
    if not host or parts.scheme not in ("http", "https"):
        raise InvalidEventError(
            "attachment must be a public http:// or https:// URL (files are never inlined: "
            f"the event API is limited to 100 KB); got {_show(url)}",
            field="url",
        )
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        public = host != "localhost" and not host.endswith(".localhost") and "." in host
    else:
        public = address.is_global
    if not public:
        raise InvalidEventError(
            f"attachment url must point to a public host SuprSend can reach; got {_show(url)}",
            field="url",
        )
    return text


class Event:
    """One event to track, validated as it is built.

    Mirrors ``suprsend.Event``: construct it with the same arguments, then pass it to
    ``track_event.delay(event)`` or ``buffer_event(event)``. Identifiers are checked and
    normalised here; properties are checked again when the event is accepted, since the
    caller may still change them until then.
    """

    __slots__ = (
        "attachments",
        "brand_id",
        "distinct_id",
        "event_name",
        "idempotency_key",
        "properties",
        "tenant_id",
    )

    def __init__(
        self,
        distinct_id: str | int | uuid.UUID,
        event_name: str,
        properties: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        tenant_id: str | None = None,
        brand_id: str | None = None,
    ) -> None:
        self.distinct_id: str = _check_distinct_id(distinct_id)
        self.event_name: str = _check_event_name(event_name)
        self.properties: dict[str, Any] = _check_properties(properties)
        self.idempotency_key: str | None = _check_idempotency_key(idempotency_key)
        self.tenant_id: str | None = _check_scope_id("tenant_id", tenant_id)
        self.brand_id: str | None = _check_scope_id("brand_id", brand_id)
        self.attachments: list[dict[str, Any]] = []

    def add_attachment(
        self, url: str, filename: str | None = None, ignore_if_error: bool = False
    ) -> None:
        """Attach a file by public URL; SuprSend fetches it when it sends the notification."""
        checked = _check_attachment_url(url)
        if filename is not None and not isinstance(filename, str):
            raise InvalidEventError(
                f"attachment filename must be a str; got {_show(filename)}", field="filename"
            )
        attachment = {
            "filename": filename.strip() if filename and filename.strip() else None,
            "contentType": None,
            "data": None,
            "url": checked,
            "ignore_if_error": bool(ignore_if_error),
        }
        self.attachments.append(attachment)

    def __repr__(self) -> str:
        # Properties stay out of reprs: they end up in logs and tracebacks.
        return (
            f"Event(distinct_id={self.distinct_id!r}, event_name={self.event_name!r}, "
            f"idempotency_key={self.idempotency_key!r}, properties=<{len(self.properties)} keys>)"
        )


class AcceptedRecord(NamedTuple):
    """An accepted event: its final bytes plus what logs and Flower may show."""

    payload: bytes
    idempotency_key: str
    event_name: str
    distinct_id: str


def event_from_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Event:
    """Build an ``Event`` from ``track_event``/``buffer_event`` call arguments.

    Accepts ``(event)`` or ``(distinct_id, event_name, properties=None, *,
    idempotency_key=None, tenant_id=None, brand_id=None)``.
    """
    if len(args) == 1 and not kwargs and isinstance(args[0], Event):
        return args[0]
    allowed = ("distinct_id", "event_name", "properties")
    if len(args) > len(allowed):
        raise InvalidEventError(
            f"expected (distinct_id, event_name, properties) or an Event; got {len(args)} "
            "positional arguments"
        )
    named = dict(zip(allowed, args, strict=False))
    extra = {"properties", "idempotency_key", "tenant_id", "brand_id", "distinct_id", "event_name"}
    for key, value in kwargs.items():
        if key not in extra:
            raise InvalidEventError(f"unexpected argument {key!r}", field=key)
        if key in named:
            raise InvalidEventError(f"argument {key!r} given twice", field=key)
        named[key] = value
    for required in ("distinct_id", "event_name"):
        if required not in named:
            raise InvalidEventError(f"{required} is required", field=required)
    return Event(**named)


def accept(
    event: Event,
    *,
    sdk_version: str,
    max_event_bytes: int = defaults.MAX_EVENT_BYTES,
    env_size: int = 0,
) -> AcceptedRecord:
    """Fix the event's identifiers and serialise it: the one moment an event is accepted.

    Field order matches suprsend-py-sdk 0.20.0, so once the sender adds ``env``
    (``with_env``) the bytes are the SDK's bytes. ``env_size`` is the length of that
    field today (``len(env_field(env))``), counted against ``max_event_bytes``.
    """
    properties = _check_properties(event.properties)
    if event.attachments:
        properties["$attachments"] = list(event.attachments)
    properties["$ss_sdk_version"] = sdk_version
    insert_id = str(uuid.uuid4())
    key = event.idempotency_key or insert_id
    record: dict[str, Any] = {
        "$insert_id": insert_id,
        "$time": int(time.time() * 1000),
        "event": event.event_name,
        "distinct_id": event.distinct_id,
        "properties": properties,
        "$idempotency_key": key,
    }
    if event.tenant_id is not None:
        record["tenant_id"] = event.tenant_id
    if event.brand_id is not None:
        record["brand_id"] = event.brand_id
    try:
        text = encode_json(record)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = _find_bad_value(event.properties, "properties") or (
            f"properties are not JSON-serialisable ({type(exc).__name__})"
        )
        raise InvalidEventError(reason, field="properties") from None
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from os.fsdecode
        identifiers = {
            "distinct_id": event.distinct_id,
            "event_name": event.event_name,
            "idempotency_key": key,
            "tenant_id": event.tenant_id,
            "brand_id": event.brand_id,
        }
        field = next(
            (f for f, v in identifiers.items() if v and not _is_utf8_encodable(v)), "properties"
        )
        raise InvalidEventError(
            f"{field} contains a lone surrogate character, which is not valid UTF-8",
            field=field,
        ) from None
    if len(payload) + env_size > max_event_bytes:
        raise InvalidEventError(
            f"event is {len(payload) + env_size} bytes serialised; the limit is {max_event_bytes} "
            "(suprsend_max_event_bytes)",
            field="properties",
        )
    return AcceptedRecord(payload, key, event.event_name, event.distinct_id)


def accept_many(
    events: Iterable[Event], *, sdk_version: str, max_event_bytes: int, env_size: int = 0
) -> list[AcceptedRecord]:
    """Accept every event or none: one bad event refuses the whole batch."""
    return [
        accept(e, sdk_version=sdk_version, max_event_bytes=max_event_bytes, env_size=env_size)
        for e in events
    ]
