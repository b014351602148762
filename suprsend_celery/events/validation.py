"""The input rules for events (the README's Quick start states them), one check per
field, and how property values become JSON.

Pure: no I/O. Each ``check_*`` returns the normalised value or raises
``InvalidEventError`` naming the field and showing the bad value (never a property
value: those are the user's data and stay out of messages). ``json_default``
converts the few non-JSON types users put in properties, without silent surprises:

- ``Decimal``: a JSON number with exactly its value (``Decimal("19.90")`` → ``19.9``,
  ``Decimal("100")`` → ``100``); one with more digits than a JSON number (a double)
  keeps is refused rather than rounded or turned into a string.
- Integers (``int`` or an integral ``Decimal``) beyond ±``MAX_SAFE_INTEGER``
  (2**53 - 1) are refused by the same rule: JSON consumers that read numbers as
  doubles (JavaScript, SuprSend's templates, most JSON libraries) silently lose their
  last digits, so ``12345678901234567`` would arrive as ``12345678901234568``. Refused
  rather than turned into strings: a number that silently becomes a string changes
  type under comparisons and numeric filters for some values only; the error names
  the path and the caller chooses ``str(value)`` (an ID) or ``float(value)``.
- ``datetime``: ISO 8601 with its offset; a naive one (no ``tzinfo``) is refused,
  since nobody can tell which moment it means. ``date`` and ``time`` → ISO 8601.
- ``UUID`` → its string.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import math
import re
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from .. import defaults
from ..exceptions import InvalidEventError

__all__ = [
    "BUILTIN_EVENT_NAMES",
    "MAX_SAFE_INTEGER",
    "check_attachment_url",
    "check_distinct_id",
    "check_event_name",
    "check_idempotency_key",
    "check_properties",
    "check_safe_numbers",
    "check_scope_id",
    "decimal_number",
    "find_bad_value",
    "is_utf8_encodable",
    "json_default",
    "show",
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

MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer an IEEE double (a JSON number, to most consumers) holds exactly."""


def show(value: object) -> str:
    """A short repr for error messages, so a huge value cannot flood a log line."""
    try:
        text = repr(value)
    except ValueError:  # e.g. an int too long to print (sys.get_int_max_str_digits)
        text = f"<{type(value).__name__}>"
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return text


#: ``$`` and ``ss_`` in any case: no other character lower-cases to ``s`` or ``_``, so
#: one ``startswith`` says what ``name[:1] == "$" or name[:3].lower() == "ss_"`` says.
_RESERVED = ("$", "ss_", "sS_", "Ss_", "SS_")


def _is_reserved(name: str) -> bool:
    return name.startswith(_RESERVED)


def is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_default(value: object) -> object:
    """Convert the few non-JSON types users commonly put in properties (see above)."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime")
        return value.isoformat()
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return decimal_number(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def decimal_number(value: Decimal) -> int | float:
    """The JSON number with exactly ``value``'s value; ``ValueError`` if there is none."""
    if not value.is_finite():
        raise ValueError("non-finite Decimal")
    if value == value.to_integral_value():
        integer = int(value)
        if abs(integer) > MAX_SAFE_INTEGER:
            raise ValueError("integral Decimal beyond the safe integer range")
        return integer
    number = float(value)
    if Decimal(repr(number)) != value:
        raise ValueError("Decimal with more digits than a JSON number keeps")
    return number


def check_distinct_id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, uuid.UUID)):
        raise InvalidEventError(
            f"distinct_id must be a str, int or UUID; got {show(value)}", field="distinct_id"
        )
    try:
        text = str(value).strip()
    except ValueError:  # an int too long to convert to text
        raise InvalidEventError(
            f"distinct_id is too long; got {show(value)}", field="distinct_id"
        ) from None
    if not text:
        raise InvalidEventError(
            f"distinct_id must not be empty; got {show(value)}", field="distinct_id"
        )
    return text


def check_event_name(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidEventError(f"event_name must be a str; got {show(value)}", field="event_name")
    name = value.strip()
    if len(name) < 2:
        raise InvalidEventError(
            f"event_name must have at least 2 characters; got {show(value)}", field="event_name"
        )
    if _is_reserved(name) and name not in BUILTIN_EVENT_NAMES:
        raise InvalidEventError(
            "event_name must not start with '$' or 'ss_' (reserved by SuprSend); "
            f"got {show(value)}",
            field="event_name",
        )
    return name


def check_idempotency_key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEventError(
            f"idempotency_key must be a str; got {show(value)}", field="idempotency_key"
        )
    key = value.strip()
    if not 1 <= len(key) <= defaults.IDEMPOTENCY_KEY_MAX:
        raise InvalidEventError(
            f"idempotency_key must have 1 to {defaults.IDEMPOTENCY_KEY_MAX} characters "
            f"after trimming; got {show(value)} ({len(key)} characters)",
            field="idempotency_key",
        )
    return key


def check_scope_id(field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEventError(f"{field} must be a str; got {show(value)}", field=field)
    if not value.strip():
        raise InvalidEventError(f"{field} must not be empty; got {show(value)}", field=field)
    if len(value) > defaults.TENANT_ID_MAX:
        raise InvalidEventError(
            f"{field} must have at most {defaults.TENANT_ID_MAX} characters; "
            f"got {show(value)} ({len(value)} characters)",
            field=field,
        )
    return value


def _unsafe_integer(path: str, kind: str, value: int) -> str:
    """The problem with an integer beyond ±MAX_SAFE_INTEGER: its path, sign and size,
    not its digits (property values stay out of messages)."""
    sign = "-" if value < 0 else ""
    try:
        size = f"{len(str(abs(value)))} digits"
    except ValueError:  # too long to print (sys.get_int_max_str_digits)
        size = "thousands of digits"
    return (
        f"{path} is {kind} of {size} ({sign}beyond 2**53 - 1 = "
        f"{MAX_SAFE_INTEGER}), which JSON consumers reading numbers as doubles "
        "(JavaScript, SuprSend's templates) round; send str(value) if it is an ID, or "
        "float(value) if rounding is fine"
    )


def _decimal_problem(value: Decimal, path: str) -> str | None:
    if not value.is_finite():
        return f"{path} is Decimal({str(value)!r}); not JSON"
    if value == value.to_integral_value() and abs(value) > MAX_SAFE_INTEGER:
        return _unsafe_integer(path, "an integral Decimal", int(value))
    try:
        decimal_number(value)
    except ValueError:
        return (
            f"{path} is a Decimal with more significant digits than a JSON number keeps "
            "(it would be rounded); send str(value) if every digit matters, or float(value)"
        )
    return None


def find_bad_value(value: object, path: str, depth: int = 0) -> str | None:
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
        return _decimal_problem(value, path)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        return _unsafe_integer(path, "an integer", value)
    if isinstance(value, _dt.datetime) and (value.tzinfo is None or value.utcoffset() is None):
        return (
            f"{path} is a datetime without a timezone, so nobody can tell which moment it "
            "is; give it one (datetime.now(timezone.utc), django.utils.timezone.now()) "
            "or send a string"
        )
    if isinstance(value, (str, int, bool, type(None), _dt.date, _dt.time, uuid.UUID)):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                return f"{path} has a key of type {type(key).__name__}; keys must be str"
            found = find_bad_value(item, f"{path}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_bad_value(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    return f"{path} has a value of type {type(value).__name__}, which is not JSON-serialisable"


#: Every integer beyond ±MAX_SAFE_INTEGER has at least 16 digits in its JSON text; so
#: do a safe one from 10**15 up and a long digit string, which the precise look accepts.
_LONG_DIGITS = re.compile(r"\d{16}")


def check_safe_numbers(properties: object, text: str) -> None:
    """Refuse an integer beyond ±MAX_SAFE_INTEGER in ``properties``, given their JSON
    ``text``. Flat properties (strings, floats, booleans, None, integers: nearly every
    event) are looked at value by value; otherwise a regex over the text finds none in
    nearly every event, and only 16 digits in a row (such a number, or a long digit
    string) make the precise look that names the path."""
    if isinstance(properties, dict):
        for value in properties.values():
            kind = type(value)
            if kind is str or kind is float or kind is bool or value is None:
                continue
            if kind is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                continue
            break  # nested, another type, or a big integer: the look below decides
        else:
            return
    if _LONG_DIGITS.search(text) is None:
        return
    found = find_bad_value(properties, "properties")
    if found is not None:
        raise InvalidEventError(found, field="properties")


def check_properties(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidEventError(
            f"properties must be a dict; got a {type(value).__name__}", field="properties"
        )
    try:
        # A plain dict is copied in C; any other Mapping through its items().
        props: dict[str, Any] = dict(value) if type(value) is dict else dict(value.items())
    except Exception as exc:  # noqa: BLE001 - a Mapping whose items() fails: still our error
        raise InvalidEventError(
            f"properties could not be read: {type(value).__name__}.items() raised "
            f"{type(exc).__name__}",
            field="properties",
        ) from None
    for key in props:
        if not isinstance(key, str):
            raise InvalidEventError(
                f"properties keys must be str; got {show(key)}", field="properties"
            )
        if key.startswith(_RESERVED):
            raise InvalidEventError(
                f"properties key {key!r} must not start with '$' or 'ss_' (reserved by SuprSend)",
                field="properties",
            )
    return props


def check_attachment_url(url: object) -> str:
    if not isinstance(url, str):
        raise InvalidEventError(f"attachment url must be a str; got {show(url)}", field="url")
    text = url.strip()
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        host = ""
    if not host or parts.scheme not in ("http", "https"):
        raise InvalidEventError(
            "attachment must be a public http:// or https:// URL (files are never inlined: "
            f"the event API is limited to 100 KB); got {show(url)}",
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
            f"attachment url must point to a public host SuprSend can reach; got {show(url)}",
            field="url",
        )
    return text
