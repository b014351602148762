"""Record validation equivalent to the SDK's ``request_json/event.json`` schema.

Hand-written instead of a JSON-schema library: it runs once per record on the hot
path, and plain type checks are an order of magnitude cheaper.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIN_EVENT_TIME_MS", "validate_record"]

#: ``$time`` minimum in the schema: 2022-01-01T00:00:00Z in epoch milliseconds.
MIN_EVENT_TIME_MS = 1640995200000

_REQUIRED_STRINGS = (("$insert_id", 36), ("event", 2), ("env", 20), ("distinct_id", 1))
_OPTIONAL_STRINGS = (("$idempotency_key", 255), ("tenant_id", 64), ("brand_id", 64))


def validate_record(record: Any, workspace_key: str) -> str | None:
    """Return what is wrong with one event record, or ``None`` if it is acceptable.

    ``workspace_key`` is the ``env`` the request's credentials call for: the workspace
    key for a signed request, the workspace UID for an API-key (Bearer) one.
    """
    if type(record) is not dict:
        return f"record must be a JSON object, got {type(record).__name__}"
    for name, min_length in _REQUIRED_STRINGS:
        if name not in record:
            return f"'{name}' is a required property"
        value = record[name]
        if type(value) is not str:
            return f"'{name}' must be a string"
        if len(value) < min_length:
            return f"'{name}' must be at least {min_length} characters"
    if record["env"] != workspace_key:
        return "'env' does not match the workspace of the request's credentials"
    if "$time" not in record:
        return "'$time' is a required property"
    ts = record["$time"]
    # JSON Schema's "integer" includes integral floats such as 1.7e12; so do we.
    if type(ts) is not int and not (type(ts) is float and ts.is_integer()):
        return "'$time' must be an integer (epoch milliseconds)"
    if ts < MIN_EVENT_TIME_MS:
        return f"'$time' must be >= {MIN_EVENT_TIME_MS}"
    if "properties" not in record:
        return "'properties' is a required property"
    if type(record["properties"]) is not dict:
        return "'properties' must be an object"
    for name, max_length in _OPTIONAL_STRINGS:
        value = record.get(name)
        if value is None:
            continue
        if type(value) is not str:
            return f"'{name}' must be a string or null"
        if len(value) > max_length:
            return f"'{name}' must be at most {max_length} characters"
    return None
