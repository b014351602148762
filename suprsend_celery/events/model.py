"""``Event`` and record building. Pure: no I/O, no Celery. The input rules are in
``validation``.

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

import functools
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from .. import defaults
from ..exceptions import InvalidEventError
from .records import encode_json
from .validation import (
    BUILTIN_EVENT_NAMES,
    check_attachment_url,
    check_distinct_id,
    check_event_name,
    check_idempotency_key,
    check_properties,
    check_safe_numbers,
    check_scope_id,
    find_bad_value,
    is_utf8_encodable,
    show,
)

__all__ = [
    "BUILTIN_EVENT_NAMES",
    "AcceptedRecord",
    "Event",
    "accept",
    "event_from_call",
    "new_insert_id",
]

_V = TypeVar("_V")


class _Checked(Generic[_V]):
    """An ``Event`` attribute whose value passes its check every time it is set."""

    def __init__(self, check: Callable[[Any], _V]) -> None:
        self.check = check
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Any, owner: Any = None) -> _V:
        value: _V = getattr(obj, self.slot)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj, self.slot, self.check(value))


_check_tenant_id = functools.partial(check_scope_id, "tenant_id")
_check_brand_id = functools.partial(check_scope_id, "brand_id")


class Event:
    """One event to track, validated as it is built.

    Mirrors ``suprsend.Event``: construct it with the same arguments, then pass it to
    ``track_event.delay(event)`` or ``buffer_event(event)``. Identifiers are checked and
    normalised here; properties are checked again when the event is accepted, since the
    caller may still change them until then.
    """

    __slots__ = (
        "_brand_id",
        "_distinct_id",
        "_event_name",
        "_idempotency_key",
        "_properties",
        "_tenant_id",
        "attachments",
    )

    _distinct_id: str
    _event_name: str
    _properties: dict[str, Any]
    _idempotency_key: str | None
    _tenant_id: str | None
    _brand_id: str | None

    # Validated whenever they are set, so changing one after construction cannot
    # slip a bad value past the checks (a ``$`` event name, say).
    distinct_id = _Checked(check_distinct_id)
    event_name = _Checked(check_event_name)
    properties = _Checked(check_properties)
    idempotency_key = _Checked(check_idempotency_key)
    tenant_id = _Checked(_check_tenant_id)
    brand_id = _Checked(_check_brand_id)

    def __init__(
        self,
        distinct_id: str | int | uuid.UUID,
        event_name: str,
        properties: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        tenant_id: str | None = None,
        brand_id: str | None = None,
    ) -> None:
        # Set through the checked descriptors above (their values live in the slots).
        self.distinct_id = distinct_id  # noqa: PLE0237
        self.event_name = event_name  # noqa: PLE0237
        self.properties = properties  # noqa: PLE0237
        self.idempotency_key = idempotency_key  # noqa: PLE0237
        self.tenant_id = tenant_id  # noqa: PLE0237
        self.brand_id = brand_id  # noqa: PLE0237
        self.attachments: list[dict[str, Any]] = []

    @classmethod
    def checked(
        cls,
        distinct_id: Any,
        event_name: Any,
        properties: Any,
        idempotency_key: Any,
        tenant_id: Any,
        brand_id: Any,
    ) -> Event:
        """``Event(...)`` with the same checks in the same order, without the descriptors'
        dispatch: a producer builds one per call, in the caller's request."""
        event = cls.__new__(cls)
        event._distinct_id = check_distinct_id(distinct_id)
        event._event_name = check_event_name(event_name)
        event._properties = check_properties(properties)
        event._idempotency_key = check_idempotency_key(idempotency_key)
        event._tenant_id = _check_tenant_id(tenant_id)
        event._brand_id = _check_brand_id(brand_id)
        event.attachments = []
        return event

    def add_attachment(
        self, url: str, filename: str | None = None, ignore_if_error: bool = False
    ) -> None:
        """Attach a file by public URL; SuprSend fetches it when it sends the notification."""
        checked = check_attachment_url(url)
        if filename is not None and not isinstance(filename, str):
            raise InvalidEventError(
                f"attachment filename must be a str; got {show(filename)}", field="filename"
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


def new_insert_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` but in half the time."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def accept(
    event: Event,
    *,
    sdk_version: str,
    max_event_bytes: int = defaults.MAX_EVENT_BYTES,
    env_size: int = 0,
    checked: bool = False,
) -> AcceptedRecord:
    """Fix the event's identifiers and serialise it: the one moment an event is accepted.

    Field order matches suprsend-py-sdk 0.20.0, so once the sender adds ``env``
    (``with_env``) the bytes are the SDK's bytes. ``env_size`` is the length of that
    field today (``len(env_field(env))``), counted against ``max_event_bytes``.
    ``checked``: the event was built from a producer's arguments just now and no code
    has held it since (no ``before_send`` hook), so its properties are as they were
    validated and are not checked again; an ``Event`` a caller built and kept may have
    had its properties changed since, so they are.
    """
    # The slots are read directly (same values as the attributes, a call less each).
    own = event._properties
    properties = own if checked else check_properties(own)
    extra: dict[str, Any] = {"$ss_sdk_version": sdk_version}
    if event.attachments:
        extra = {"$attachments": list(event.attachments), **extra}
    properties = {**properties, **extra}  # the event's own dict stays as it is
    insert_id = new_insert_id()
    key = event._idempotency_key or insert_id
    event_name, distinct_id = event._event_name, event._distinct_id
    record: dict[str, Any] = {
        "$insert_id": insert_id,
        "$time": int(time.time() * 1000),
        "event": event_name,
        "distinct_id": distinct_id,
        "properties": properties,
        "$idempotency_key": key,
    }
    if event._tenant_id is not None:
        record["tenant_id"] = event._tenant_id
    if event._brand_id is not None:
        record["brand_id"] = event._brand_id
    try:
        text = encode_json(record)
    except Exception as exc:  # noqa: BLE001 - what a value's own methods raise is ours too
        try:
            found = find_bad_value(event.properties, "properties")
        except Exception:  # noqa: BLE001 - a value that fails when looked at, too
            found = None
        reason = found or f"properties are not JSON-serialisable ({type(exc).__name__})"
        raise InvalidEventError(reason, field="properties") from None
    check_safe_numbers(own, text)
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
            (f for f, v in identifiers.items() if v and not is_utf8_encodable(v)), "properties"
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
    return AcceptedRecord(payload, key, event_name, distinct_id)
