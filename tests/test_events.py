"""Events: every input rule (README), and records byte-identical to suprsend-py-sdk 0.20.0.

The record's fields and their order are in docs/protocol.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
import uuid
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
import suprsend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from suprsend.request_schema import _get_schema_validator

from suprsend_celery import Event, InvalidEventError, SuprsendCeleryError
from suprsend_celery.events.model import AcceptedRecord, accept, event_from_call
from suprsend_celery.events.records import bulk_body, env_field, with_env
from suprsend_celery.events.validation import BUILTIN_EVENT_NAMES

KEY = "WSKEY_abcdefghij0123456789"
SECRET = "WSSECRET_0123456789abcdef"
SDK_VERSION = "suprsend-celery/test (python/3; linux)"
#: A marker that must never show up in an error message when it is a property value.
PRIVATE = "PRIVATE-4111-1111"

FIELD_ORDER = [
    "$insert_id",
    "$time",
    "event",
    "env",
    "distinct_id",
    "properties",
    "$idempotency_key",
    "tenant_id",
    "brand_id",
]

SCHEMA = _get_schema_validator("event")


ENV_FIELD = env_field(KEY)


def accept_event(event: Event, max_event_bytes: int = 102_400) -> AcceptedRecord:
    """Accept ``event`` and return its record as sent (``env`` spliced in), as a client does."""
    accepted = accept(
        event, sdk_version=SDK_VERSION, max_event_bytes=max_event_bytes, env_size=len(ENV_FIELD)
    )
    return accepted._replace(payload=with_env(accepted.payload, ENV_FIELD))


def record_of(event: Event) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(accept_event(event).payload)
    return record


def refused(field: str | None, build: Any, *, named: bool = True) -> InvalidEventError:
    """Run ``build`` and return the InvalidEventError it must raise for ``field``.

    ``named``: the message mentions the field (the size check names the event instead).
    """
    with pytest.raises(InvalidEventError) as info:
        build()
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, SuprsendCeleryError)
    assert error.field == field
    if field is not None and named:
        assert field.lower() in str(error).lower()
    return error


def sdk_record(
    distinct_id: str,
    event_name: str,
    properties: dict[str, Any],
    ours: dict[str, Any],
    *,
    attachments: list[tuple[str, str | None]] = (),  # type: ignore[assignment]
    **options: Any,
) -> dict[str, Any]:
    """The record suprsend-py-sdk builds for the same input, with our per-accept fields."""
    sdk = suprsend.Suprsend(KEY, SECRET)
    event = suprsend.Event(distinct_id, event_name, dict(properties), **options)
    for url, name in attachments:
        event.add_attachment(url, name)
    record, _size = event.get_final_json(sdk)
    record["$insert_id"] = ours["$insert_id"]
    record["$time"] = ours["$time"]
    record["properties"]["$ss_sdk_version"] = SDK_VERSION
    if "$idempotency_key" not in record:
        record["$idempotency_key"] = ours["$idempotency_key"]
    result: dict[str, Any] = record
    return result


class TestRecordBytes:
    """Accepted records are exactly the bytes suprsend-py-sdk would send."""

    def test_payload_equals_sdk_json_dumps_of_the_sdk_record(self) -> None:
        """For the same input the SDK's record dumps to our payload, byte for byte."""
        props = {"amount": 12.5, "items": [1, "two", None, True], "name": "Zoë 東京 🚀"}
        event = Event(
            "user-1", "order_placed", props, idempotency_key="k-1", tenant_id="t1", brand_id="b1"
        )
        accepted = accept_event(event)
        ours = json.loads(accepted.payload)
        theirs = sdk_record(
            "user-1",
            "order_placed",
            props,
            ours,
            idempotency_key="k-1",
            tenant_id="t1",
            brand_id="b1",
        )
        assert json.dumps(theirs, ensure_ascii=False).encode("utf-8") == accepted.payload

    def test_attachment_matches_sdk(self) -> None:
        """A URL attachment is spelled like the SDK's, before ``$ss_sdk_version``."""
        event = Event("u1", "invoice_ready", {"n": 1}, idempotency_key="k")
        event.add_attachment("https://example.com/invoice.pdf", "invoice.pdf")
        accepted = accept_event(event)
        ours = json.loads(accepted.payload)
        theirs = sdk_record(
            "u1",
            "invoice_ready",
            {"n": 1},
            ours,
            attachments=[("https://example.com/invoice.pdf", "invoice.pdf")],
            idempotency_key="k",
        )
        assert json.dumps(theirs, ensure_ascii=False).encode() == accepted.payload
        assert list(ours["properties"]) == ["n", "$attachments", "$ss_sdk_version"]

    def test_payload_is_json_dumps_of_itself(self) -> None:
        """Re-dumping the parsed record reproduces the payload (ensure_ascii=False spelling)."""
        event = Event(42, "signed_up", {"nested": {"a": [{"b": "ü"}]}, "z": -0.0, "big": 2**53 - 1})
        payload = accept_event(event).payload
        assert json.dumps(json.loads(payload), ensure_ascii=False).encode("utf-8") == payload

    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            ({}, FIELD_ORDER[:7]),
            ({"tenant_id": "t"}, [*FIELD_ORDER[:7], "tenant_id"]),
            ({"brand_id": "b"}, [*FIELD_ORDER[:7], "brand_id"]),
            ({"tenant_id": "t", "brand_id": "b", "idempotency_key": "k"}, FIELD_ORDER),
        ],
    )
    def test_field_order(self, options: dict[str, str], expected: list[str]) -> None:
        """Fields come in the SDK's order; ``$ss_sdk_version`` is the last property."""
        record = record_of(Event("u", "ev", {"a": 1, "b": 2}, **options))
        assert list(record) == expected
        assert list(record["properties"]) == ["a", "b", "$ss_sdk_version"]
        assert record["properties"]["$ss_sdk_version"] == SDK_VERSION
        assert record["env"] == KEY

    def test_unicode_is_not_escaped(self) -> None:
        """Non-ASCII text is sent as UTF-8, never as ``\\u`` escapes."""
        payload = accept_event(Event("ünï", "ëvent", {"city": "Zürich 北京 🎉"})).payload
        assert "Zürich 北京 🎉".encode() in payload
        assert "ünï".encode() in payload
        assert b"\\u" not in payload

    def test_time_is_taken_at_accept(self) -> None:
        """``$time`` is epoch milliseconds of the accept call, not of construction."""
        event = Event("u", "ev")
        before = int(time.time() * 1000)
        record = record_of(event)
        after = int(time.time() * 1000)
        assert before <= record["$time"] <= after

    def test_identifiers_are_fixed_in_the_payload(self) -> None:
        """Without a key, ``$idempotency_key`` is the uuid4 ``$insert_id``, both in the bytes."""
        accepted = accept_event(Event("u", "ev"))
        record = json.loads(accepted.payload)
        assert uuid.UUID(record["$insert_id"]).version == 4
        assert record["$idempotency_key"] == record["$insert_id"] == accepted.idempotency_key
        assert accepted.event_name == "ev"
        assert accepted.distinct_id == "u"
        assert isinstance(accepted.payload, bytes)

    def test_given_key_is_kept_and_each_accept_is_a_new_insert(self) -> None:
        """A caller's key survives every accept; ``$insert_id`` is per accept."""
        event = Event("u", "ev", idempotency_key="  order-7  ")
        first, second = record_of(event), record_of(event)
        assert first["$idempotency_key"] == second["$idempotency_key"] == "order-7"
        assert first["$insert_id"] != second["$insert_id"]

    @pytest.mark.parametrize(
        ("given", "sent"),
        [
            ("  alice  ", "alice"),
            (7, "7"),
            (0, "0"),
            (-3, "-3"),
            (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ],
    )
    def test_distinct_id_is_sent_as_str(self, given: Any, sent: str) -> None:
        """An int or UUID distinct_id is sent as a trimmed string."""
        assert record_of(Event(given, "ev"))["distinct_id"] == sent

    def test_builtin_names_are_allowed(self) -> None:
        """SuprSend's own ``$`` events pass validation and are sent trimmed."""
        for name in sorted(BUILTIN_EVENT_NAMES):
            assert record_of(Event("u", f" {name} "))["event"] == name

    def test_value_conversions(self) -> None:
        """datetime/date → ISO 8601, Decimal → the JSON number of its value, UUID → str;
        nested too (issue 11 item 6: a Decimal amount was sent as a string)."""
        moment = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)
        props = {
            "at": moment,
            "day": dt.date(2026, 1, 2),
            "price": Decimal("19.99"),
            "id": uuid.UUID(int=5),
            "list": [dt.date(2020, 2, 29), Decimal("1E+2")],
            "tuple": (1, 2),
        }
        sent = record_of(Event("u", "ev", props))["properties"]
        assert sent["at"] == "2026-01-02T03:04:05.600000+00:00"
        assert sent["day"] == "2026-01-02"
        assert sent["price"] == 19.99
        assert sent["id"] == str(uuid.UUID(int=5))
        assert sent["list"] == ["2020-02-29", 100]
        assert sent["tuple"] == [1, 2]

    @pytest.mark.parametrize(
        ("value", "spelled"),
        [
            (Decimal("19.90"), b"19.9"),
            (Decimal("0.1"), b"0.1"),
            (Decimal("-3.25"), b"-3.25"),
            (Decimal("100"), b"100"),
            (Decimal("100.00"), b"100"),
            (Decimal("1E+3"), b"1000"),
            (Decimal("9007199254740991"), b"9007199254740991"),
            (Decimal("-9.007199254740991E+15"), b"-9007199254740991"),
        ],
    )
    def test_decimal_is_the_number_it_holds(self, value: Decimal, spelled: bytes) -> None:
        payload = accept_event(Event("u", "ev", {"amount": value})).payload
        assert b'"amount": ' + spelled + b", " in payload
        assert Decimal(str(json.loads(payload)["properties"]["amount"])) == value

    def test_decimal_that_a_json_number_would_round_is_refused(self) -> None:
        """More digits than a double keeps: refused, never silently rounded or stringified."""
        event = Event("u", "ev", {"amount": Decimal("0.1000000000000000055511151231257827")})
        error = refused("properties", lambda: accept_event(event), named=False)
        assert "properties['amount']" in str(error) and "str(value)" in str(error)
        assert "0.1000000000000000055" not in str(error)

    def test_integral_decimal_beyond_the_safe_range_is_refused(self) -> None:
        """The integer rule (``TestSafeIntegers``) holds for a Decimal integer too: this
        one was sent as all 30 digits, which consumers reading doubles round."""
        event = Event("u", "ev", {"n": Decimal("123456789012345678901234567890")})
        error = refused("properties", lambda: accept_event(event), named=False)
        assert "properties['n'] is an integral Decimal of 30 digits" in str(error)
        assert "1234567890123" not in str(error)

    def test_naive_datetime_is_refused(self) -> None:
        """No timezone, no way to tell the moment: refused, naming the property."""
        event = Event("u", "ev", {"due": {"at": dt.datetime(2026, 1, 2, 3, 4, 5)}})
        error = refused("properties", lambda: accept_event(event), named=False)
        assert "properties['due']['at'] is a datetime without a timezone" in str(error)
        aware = dt.datetime(
            2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
        )
        sent = record_of(Event("u", "ev", {"at": aware}))["properties"]["at"]
        assert sent == "2026-01-02T03:04:05+05:30"

    def test_record_passes_sdk_schema(self) -> None:
        """A full record validates against the SDK's JSON schema."""
        event = Event("u", "ev", {"x": 1}, idempotency_key="k", tenant_id="t", brand_id="b")
        event.add_attachment("https://cdn.example.com/a.png")
        SCHEMA.validate(record_of(event))

    def test_properties_are_copied(self) -> None:
        """Later changes to the caller's dict do not change an accepted payload."""
        props = {"a": 1}
        event = Event("u", "ev", props)
        payload = accept_event(event).payload
        props["a"] = 2
        assert json.loads(payload)["properties"]["a"] == 1
        assert "$ss_sdk_version" not in props

    def test_repr_hides_properties(self) -> None:
        """``repr(Event)`` shows identifiers and a key count, never property values."""
        text = repr(Event("u", "ev", {"card": PRIVATE}, idempotency_key="k"))
        assert PRIVATE not in text
        assert "'u'" in text
        assert "1 keys" in text


MAX_SAFE = 2**53 - 1
_SAFE_INTS = st.one_of(
    st.integers(-MAX_SAFE, MAX_SAFE),
    st.integers(0, 64).map(lambda d: MAX_SAFE - d),  # at the edge
    st.integers(0, 64).map(lambda d: -MAX_SAFE + d),
)
_UNSAFE_INTS = st.one_of(
    st.integers(MAX_SAFE + 1, MAX_SAFE + 64),  # just past the edge
    st.integers(-MAX_SAFE - 64, -MAX_SAFE - 1),
    st.integers(min_value=MAX_SAFE + 1),
    st.integers(max_value=-MAX_SAFE - 1),
)


class TestSafeIntegers:
    """One rule for integers, ``int`` or integral ``Decimal``: within ±(2**53 - 1) they
    are sent exactly, beyond it they are refused naming the path (not the digits), as
    consumers that read JSON numbers as doubles would round them."""

    @settings(max_examples=200, deadline=None)
    @given(value=_SAFE_INTS, as_decimal=st.booleans())
    def test_safe_integers_are_sent_exactly(self, value: int, as_decimal: bool) -> None:
        sent = record_of(Event("u", "ev", {"n": Decimal(value) if as_decimal else value}))
        assert sent["properties"]["n"] == value
        assert float(value) == value  # what a double-reading consumer gets: the same

    @settings(max_examples=200, deadline=None)
    @given(value=_UNSAFE_INTS, as_decimal=st.booleans(), nested=st.booleans())
    def test_unsafe_integers_are_refused(self, value: int, as_decimal: bool, nested: bool) -> None:
        number: Any = Decimal(value) if as_decimal else value
        properties = {"a": [1, {"b": number}]} if nested else {"n": number}
        error = refused(
            "properties", lambda: accept_event(Event("u", "ev", properties)), named=False
        )
        path = "properties['a'][1]['b']" if nested else "properties['n']"
        kind = "an integral Decimal" if as_decimal else "an integer"
        assert f"{path} is {kind} of {len(str(abs(value)))} digits" in str(error)
        assert "beyond 2**53 - 1" in str(error) and "str(value)" in str(error)
        assert str(abs(value)) not in str(error)

    def test_the_boundary(self) -> None:
        """2**53 - 1 is sent; 2**53, which a double cannot tell from 2**53 + 1, is not."""
        assert record_of(Event("u", "ev", {"n": MAX_SAFE}))["properties"]["n"] == MAX_SAFE
        assert record_of(Event("u", "ev", {"n": -MAX_SAFE}))["properties"]["n"] == -MAX_SAFE
        for value in (MAX_SAFE + 1, -MAX_SAFE - 1):
            refused(
                "properties", lambda v=value: accept_event(Event("u", "ev", {"n": v})), named=False
            )

    def test_long_digit_strings_bools_and_floats_are_untouched(self) -> None:
        """Only integers: an ID as a string, a bool and a large float are sent as given."""
        props = {"id": "123456789012345678901234", "ok": True, "big": 1e20, "t": 1234567890123456.0}
        sent = record_of(Event("u", "ev", props))["properties"]
        assert {k: sent[k] for k in props} == props

    def test_nothing_is_buffered(self, celery_app: Any) -> None:
        """buffer_event refuses before Redis: the buffer stays empty."""
        from suprsend_celery import buffer_event, buffer_stats

        with pytest.raises(InvalidEventError, match=r"properties\['order_id'\] is an integer"):
            buffer_event("u", "order_placed", {"order_id": 2**63 - 1}, app=celery_app)
        assert buffer_stats(app=celery_app)["pending"] == 0


class TestDistinctId:
    """``distinct_id``: str, int or UUID (not bool), non-empty after trimming."""

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            (True, "True"),
            (False, "False"),
            (None, "None"),
            (1.5, "1.5"),
            (b"bytes-id", "b'bytes-id'"),
            (["u"], "['u']"),
            ("", "''"),
            ("   ", "'   '"),
            ("\t\n", "'\\t\\n'"),
        ],
    )
    def test_refused(self, value: Any, shown: str) -> None:
        """Each bad distinct_id is refused with the field and the value in the message."""
        error = refused("distinct_id", lambda: Event(value, "ev"))
        assert shown in str(error)

    def test_huge_int_refused(self) -> None:
        """An int too long to turn into text is refused, not a bare ValueError."""
        refused("distinct_id", lambda: Event(10**5000, "ev"))

    def test_long_value_is_shortened_in_message(self) -> None:
        """A huge bad value cannot flood the message."""
        error = refused("distinct_id", lambda: Event([1] * 10_000, "ev"))
        assert len(str(error)) < 300


class TestEventName:
    """``event_name``: str, at least 2 characters after trimming, no reserved prefix."""

    @pytest.mark.parametrize(
        "value",
        [
            None,
            5,
            b"ev",
            "",
            "a",
            " a ",
            "$custom",
            " $custom",
            "$",
            "ss_custom",
            "SS_custom",
            "Ss_x",
            "sS_",
            "$Identify",
        ],
    )
    def test_refused(self, value: Any) -> None:
        """Each bad event name is refused, naming the field and showing the value."""
        error = refused("event_name", lambda: Event("u", value))
        assert repr(value) in str(error)

    @pytest.mark.parametrize("value", ["ab", "  ok  ", "ss", "s_x", "ssx", "my$event", "ß_x"])
    def test_accepted(self, value: str) -> None:
        """Names that merely resemble the reserved prefixes are fine."""
        assert record_of(Event("u", value))["event"] == value.strip()


class TestProperties:
    """``properties``: a str-keyed dict of JSON values, no reserved keys, no NaN."""

    @pytest.mark.parametrize("value", [[("a", 1)], "a=1", 5, ("a",), {"a"}])
    def test_not_a_dict(self, value: Any) -> None:
        """Anything but a mapping is refused, naming its type only."""
        error = refused("properties", lambda: Event("u", "ev", value))
        assert type(value).__name__ in str(error)

    @pytest.mark.parametrize("key", [1, None, 2.5, ("a", "b"), b"k", True])
    def test_non_str_key(self, key: Any) -> None:
        """A top-level key that is not a str is refused."""
        refused("properties", lambda: Event("u", "ev", {key: PRIVATE}))

    @pytest.mark.parametrize(
        "key", ["$attachments", "$ss_sdk_version", "$x", "ss_x", "SS_X", "sS_y", "$"]
    )
    def test_reserved_key(self, key: str) -> None:
        """User keys must not start with ``$`` or ``ss_`` (any case)."""
        error = refused("properties", lambda: Event("u", "ev", {key: PRIVATE}))
        assert key in str(error)
        assert PRIVATE not in str(error)

    @pytest.mark.parametrize(
        ("value", "named"),
        [
            ({PRIVATE}, "set"),
            (frozenset({PRIVATE}), "frozenset"),
            (PRIVATE.encode(), "bytes"),
            (bytearray(PRIVATE.encode()), "bytearray"),
            (complex(1, 2), "complex"),
            (Fraction(1, 3), "Fraction"),
            (object(), "object"),
            (dt.timedelta(seconds=5), "timedelta"),
            (range(3), "range"),
            ({"inner": [PRIVATE, {PRIVATE}]}, "set"),
            ([PRIVATE, b"x"], "bytes"),
            (Event, "type"),
        ],
    )
    def test_unserialisable_values(self, value: Any, named: str) -> None:
        """Values JSON cannot carry are refused, naming the type but never the value."""
        error = refused("properties", lambda: accept_event(Event("u", "ev", {"field": value})))
        assert named in str(error)
        assert PRIVATE not in str(error)
        assert "field" in str(error)

    @pytest.mark.parametrize(
        "value",
        [
            math.nan,
            math.inf,
            -math.inf,
            [1.0, math.nan],
            {"deep": {"x": math.inf}},
            Decimal("NaN"),
            Decimal("Infinity"),
            Decimal("-Infinity"),
            Decimal("sNaN"),
        ],
    )
    def test_non_finite_numbers(self, value: Any) -> None:
        """NaN and Infinity (floats or Decimals) are refused: they are not JSON."""
        error = refused("properties", lambda: accept_event(Event("u", "ev", {"n": value})))
        assert "NaN" in str(error) or "Infinity" in str(error) or "not JSON" in str(error)

    def test_circular_dict(self) -> None:
        """A dict that contains itself is refused, not a RecursionError."""
        loop: dict[str, Any] = {"secret": PRIVATE}
        loop["self"] = loop
        error = refused("properties", lambda: accept_event(Event("u", "ev", {"loop": loop})))
        assert PRIVATE not in str(error)

    def test_circular_list(self) -> None:
        """A list that contains itself is refused."""
        loop: list[Any] = [PRIVATE]
        loop.append(loop)
        refused("properties", lambda: accept_event(Event("u", "ev", {"loop": loop})))

    def test_deep_nesting(self) -> None:
        """Absurdly deep (non-circular) nesting is refused, not a crash."""
        deep: Any = PRIVATE
        for _ in range(100_000):
            deep = [deep]
        refused("properties", lambda: accept_event(Event("u", "ev", {"deep": deep})))

    def test_nested_key_type_refused(self) -> None:
        """A nested dict with an unencodable key type is refused, naming the type."""
        error = refused(
            "properties", lambda: accept_event(Event("u", "ev", {"d": {(1, 2): PRIVATE}}))
        )
        assert "tuple" in str(error)
        assert PRIVATE not in str(error)

    def test_lone_surrogate(self) -> None:
        """Text that cannot be UTF-8 encoded is refused, not a UnicodeEncodeError."""
        refused("properties", lambda: accept_event(Event("u", "ev", {"s": "bad \ud800"})))

    def test_lone_surrogate_in_identifier(self) -> None:
        """A surrogate in distinct_id is refused, naming distinct_id."""
        refused("distinct_id", lambda: accept_event(Event("bad\udcff", "ev")))

    def test_mutated_after_construction(self) -> None:
        """Properties are checked again at accept time."""
        event = Event("u", "ev", {"a": 1})
        event.properties["$sneaky"] = 1
        refused("properties", lambda: accept_event(event))
        with pytest.raises(InvalidEventError, match="properties must be a dict"):
            event.properties = [1]  # type: ignore[assignment]

    def test_none_means_empty(self) -> None:
        """``properties=None`` sends only the SDK version."""
        assert record_of(Event("u", "ev", None))["properties"] == {"$ss_sdk_version": SDK_VERSION}


class TestIdempotencyKey:
    """``idempotency_key``: str, trimmed, 1 to 255 characters."""

    @pytest.mark.parametrize("value", [5, b"key", ["k"], "", "   ", "k" * 256, " " + "k" * 256])
    def test_refused(self, value: Any) -> None:
        """Each bad key is refused, naming the field."""
        error = refused("idempotency_key", lambda: Event("u", "ev", idempotency_key=value))
        assert repr(value)[:20] in str(error)

    def test_limits(self) -> None:
        """255 characters are fine, and whitespace around them does not count."""
        key = "k" * 255
        assert record_of(Event("u", "ev", idempotency_key=f"  {key}\n"))["$idempotency_key"] == key
        assert record_of(Event("u", "ev", idempotency_key="x"))["$idempotency_key"] == "x"


class TestScopeIds:
    """``tenant_id`` / ``brand_id``: str of at most 64 characters."""

    @pytest.mark.parametrize("field", ["tenant_id", "brand_id"])
    @pytest.mark.parametrize("value", [5, b"t", ["t"], "t" * 65, "", "  "])
    def test_refused(self, field: str, value: Any) -> None:
        """Each bad value is refused, naming the field and showing the value."""
        error = refused(field, lambda: Event("u", "ev", **{field: value}))
        assert repr(value)[:20] in str(error)

    @pytest.mark.parametrize("field", ["tenant_id", "brand_id"])
    def test_limit(self, field: str) -> None:
        """64 characters are accepted and sent as given."""
        assert record_of(Event("u", "ev", **{field: "t" * 64}))[field] == "t" * 64


class TestAttachments:
    """Attachments: public http(s) URLs only; files are never inlined."""

    @pytest.mark.parametrize(
        "url",
        [
            "/etc/passwd",
            "invoice.pdf",
            "C:\\Users\\me\\invoice.pdf",
            "~/invoice.pdf",
            "file:///etc/passwd",
            "ftp://example.com/a.pdf",
            "data:text/plain;base64,aGk=",
            "s3://bucket/key",
            "https://",
            "http:///path",
            "http://localhost/a.pdf",
            "http://localhost./a.pdf",
            "http://app.localhost/a.pdf",
            "http://127.0.0.1/a.pdf",
            "http://127.0.0.1./a.pdf",
            "http://0.0.0.0/a.pdf",
            "http://10.1.2.3/a.pdf",
            "http://172.16.0.1/a.pdf",
            "http://192.168.1.10/a.pdf",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/a.pdf",
            "http://[fe80::1]/a.pdf",
            "http://[::ffff:127.0.0.1]/a.pdf",
            "http://intranet/a.pdf",
            "http://[::1",
            "",
        ],
    )
    def test_refused(self, url: str) -> None:
        """Local paths, other schemes and non-public hosts are refused, showing the URL."""
        event = Event("u", "ev")
        error = refused("url", lambda: event.add_attachment(url))
        assert repr(url)[:40] in str(error)
        assert event.attachments == []

    @pytest.mark.parametrize("url", [None, 5, b"https://example.com/a"])
    def test_not_a_str(self, url: Any) -> None:
        """A URL that is not a str is refused."""
        refused("url", lambda: Event("u", "ev").add_attachment(url))

    def test_filename_must_be_str(self) -> None:
        """A non-str filename is refused."""
        refused(
            "filename", lambda: Event("u", "ev").add_attachment("https://example.com/a", b"a.pdf")
        )

    @pytest.mark.parametrize(
        "url",
        [
            "https://example.com/a.pdf",
            "http://cdn.example.org/x?sig=1",
            "https://8.8.8.8/a.png",
            "https://[2606:4700::1111]/a.png",
            "  https://example.com/trim.pdf  ",
        ],
    )
    def test_accepted(self, url: str) -> None:
        """Public URLs are attached as URL attachments, trimmed."""
        event = Event("u", "ev")
        event.add_attachment(url, "  name.pdf ", ignore_if_error=True)
        attachment = record_of(event)["properties"]["$attachments"][0]
        assert attachment == {
            "filename": "name.pdf",
            "contentType": None,
            "data": None,
            "url": url.strip(),
            "ignore_if_error": True,
        }


class TestSize:
    """The whole serialised event is at most ``max_event_bytes``."""

    def test_exact_limit(self) -> None:
        """A payload of exactly the limit is accepted; one byte more is refused."""
        limit = 4096
        base = len(accept_event(Event("u", "ev", {"pad": ""}, idempotency_key="k")).payload)
        fits = Event("u", "ev", {"pad": "x" * (limit - base)}, idempotency_key="k")
        assert len(accept_event(fits, limit).payload) == limit
        over = Event("u", "ev", {"pad": "x" * (limit - base + 1)}, idempotency_key="k")
        error = refused("properties", lambda: accept_event(over, limit), named=False)
        assert str(limit + 1) in str(error)
        assert str(limit) in str(error)

    def test_default_is_100_kib(self) -> None:
        """By default a 100 KiB event is refused and the message names the setting."""
        big = Event("u", "ev", {"pad": "x" * 102_400})
        error = refused("properties", lambda: accept(big, sdk_version="v"), named=False)
        assert "suprsend_max_event_bytes" in str(error)
        assert "xxxx" not in str(error)

    def test_limit_counts_utf8_bytes(self) -> None:
        """The limit is in UTF-8 bytes, not characters."""
        base = len(accept_event(Event("u", "ev", {"pad": ""}, idempotency_key="k")).payload)
        chars = (2000 - base) // 3 + 1
        event = Event("u", "ev", {"pad": "€" * chars}, idempotency_key="k")  # 3 bytes each
        refused("properties", lambda: accept_event(event, 2000), named=False)


class TestEventFromCall:
    """``event_from_call`` maps task-style arguments onto ``Event``."""

    def test_event_instance(self) -> None:
        """A lone Event is passed through."""
        event = Event("u", "ev")
        assert event_from_call((event,), {}) is event

    def test_positional_and_keywords(self) -> None:
        """Positional identifiers plus keyword options build an Event."""
        event = event_from_call(("u", "ev", {"a": 1}), {"idempotency_key": "k", "tenant_id": "t"})
        assert (event.distinct_id, event.event_name, event.properties) == ("u", "ev", {"a": 1})
        assert (event.idempotency_key, event.tenant_id, event.brand_id) == ("k", "t", None)

    @pytest.mark.parametrize(
        ("args", "kwargs", "field"),
        [
            (("u", "ev", {}, "extra"), {}, None),
            (("u",), {}, "event_name"),
            ((), {"event_name": "ev"}, "distinct_id"),
            (("u", "ev"), {"event_name": "other"}, "event_name"),
            (("u", "ev"), {"colour": "red"}, "colour"),
            (("u", "$bad"), {}, "event_name"),
        ],
    )
    def test_refused(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], field: str | None
    ) -> None:
        """Wrong call shapes raise InvalidEventError, not TypeError."""
        with pytest.raises(InvalidEventError) as info:
            event_from_call(args, kwargs)
        assert info.value.field == field


# -- property test -------------------------------------------------------------------------


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten, else ``bad``: enough valid records to check them too."""
    return st.integers(0, 9).flatmap(lambda n: bad if n == 0 else good)


#: Ints too long for str() (built lazily: hypothesis reprs its constants).
_HUGE_INTS = st.integers(4301, 4400).map(lambda digits: 10**digits)
#: Any code point, lone surrogates included.
_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
_JSONISH = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.uuids(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.dates(),
    st.integers(0, 120_000).map(lambda n: "x" * n),
)
_WEIRD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not math.isfinite(f)),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.datetimes(timezones=st.none()),
    _ANY_TEXT,
    st.binary(max_size=4),
    st.complex_numbers(max_magnitude=10),
    st.fractions(max_denominator=10),
    st.sampled_from([object(), Event, range(2), dt.timedelta(1), Ellipsis]),
    _HUGE_INTS,
    st.sampled_from([int, str, float, bytes, bool, frozenset, tuple, complex]).flatmap(
        st.from_type
    ),
)
_KEYS = _mostly(
    st.text(max_size=8),
    st.one_of(
        _ANY_TEXT,
        st.sampled_from(["$x", "ss_y", "SS_z", "$attachments", "$ss_sdk_version"]),
        st.integers(),
        st.floats(),
        st.none(),
        st.booleans(),
        st.tuples(st.integers()),
    ),
)
_VALUES = st.recursive(
    _mostly(_JSONISH, _WEIRD),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(_KEYS, children, max_size=4),
        st.sets(st.integers(), max_size=2),
    ),
    max_leaves=8,
)
_IDS = _mostly(
    st.one_of(st.text(min_size=1, max_size=20), st.integers(), st.uuids()),
    st.one_of(_ANY_TEXT, st.booleans(), st.none(), st.floats(), st.binary(max_size=3), _HUGE_INTS),
)
_NAMES = _mostly(
    st.one_of(st.text(min_size=2, max_size=20), st.sampled_from(sorted(BUILTIN_EVENT_NAMES))),
    st.one_of(_ANY_TEXT, st.integers(), st.none(), st.sampled_from(["$x", "ss_y", "SS_"])),
)
_OPTIONAL_TEXT = _mostly(
    st.none() | st.text(min_size=1, max_size=64),
    st.one_of(st.text(max_size=300), _ANY_TEXT, st.integers(), st.binary(max_size=2)),
)
_URLS = _mostly(
    st.none() | st.sampled_from(["https://example.com/a.pdf", "http://cdn.example.org/x"]),
    st.one_of(
        _ANY_TEXT,
        st.sampled_from(["http://10.0.0.1/x", "file:///x", "http://[::1", "/tmp/a", "ftp://a.b"]),
        st.integers(),
    ),
)
_PROPERTIES = _mostly(st.dictionaries(_KEYS, _VALUES, max_size=5), _VALUES)
#: ``Event``'s arguments, in its order.
_EVENT_FIELDS = {
    "distinct_id": _IDS,
    "event_name": _NAMES,
    "properties": _PROPERTIES,
    "idempotency_key": _OPTIONAL_TEXT,
    "tenant_id": _OPTIONAL_TEXT,
    "brand_id": _OPTIONAL_TEXT,
}
_FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class TestPropertyBased:
    """Arbitrary input builds a valid record or raises InvalidEventError; nothing else."""

    @_FUZZ
    @given(**_EVENT_FIELDS)
    def test_producers_build_the_event_the_constructor_builds(self, **fields: Any) -> None:
        """``Event.checked`` (the producers' way) and ``Event(...)`` accept and refuse
        the same input, with the same first error, and hold the same values."""
        names = tuple(_EVENT_FIELDS)

        def outcome(build: Any) -> Any:
            try:
                event = build(*(fields[name] for name in names))
            except InvalidEventError as exc:
                return ("refused", str(exc), exc.field)
            return (*(getattr(event, name) for name in names), event.attachments)

        assert outcome(Event.checked) == outcome(Event)

    @_FUZZ
    @given(**_EVENT_FIELDS, attachment=_URLS)
    def test_valid_record_or_invalid_event_error(
        self,
        distinct_id: Any,
        event_name: Any,
        properties: Any,
        idempotency_key: Any,
        tenant_id: Any,
        brand_id: Any,
        attachment: Any,
    ) -> None:
        """Either the record round-trips and passes the SDK schema, or InvalidEventError."""
        try:
            event = Event(distinct_id, event_name, properties, idempotency_key, tenant_id, brand_id)
            if attachment is not None:
                event.add_attachment(attachment)
            accepted = accept_event(event)
        except InvalidEventError as error:
            assert isinstance(error, ValueError)
            assert error.field is not None
            return
        record = json.loads(accepted.payload)
        assert json.dumps(record, ensure_ascii=False).encode("utf-8") == accepted.payload
        SCHEMA.validate(record)
        assert list(record) == [k for k in FIELD_ORDER if k in record]
        assert record["$idempotency_key"] == accepted.idempotency_key
        assert len(accepted.payload) <= 102_400


class TestEnvAtSend:
    """``env`` is not stored; ``with_env`` splices the sender's into the SDK's position."""

    def test_stored_record_has_no_env(self) -> None:
        stored = accept(Event("u", "ev"), sdk_version=SDK_VERSION).payload
        assert "env" not in json.loads(stored)

    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(
        name=st.text(min_size=2, max_size=20).filter(lambda n: not n.strip().startswith("$")),
        distinct_id=st.text(min_size=1, max_size=10),
        props=st.dictionaries(
            st.sampled_from(["env", "distinct_id", "a", 'x", "env": "y']),
            st.text(max_size=10),
            max_size=3,
        ),
        env=st.sampled_from([KEY, "WSKEY_other_0123456789abc", 'u"i\\d']),
    )
    def test_as_sent_is_the_sdk_record(
        self, name: str, distinct_id: str, props: dict[str, str], env: str
    ) -> None:
        """Whatever the names and properties hold, the result is the SDK's bytes with ``env``."""
        try:
            event = Event(distinct_id, name, props)
            stored = accept(event, sdk_version=SDK_VERSION).payload
        except InvalidEventError:
            return
        sent = with_env(stored, env_field(env))
        record = json.loads(stored)
        expected = {**dict(list(record.items())[:3]), "env": env, **dict(list(record.items())[3:])}
        assert sent == json.dumps(expected, ensure_ascii=False).encode("utf-8")
        # A record stored with an env (by 0.1) gets the sender's instead.
        assert with_env(sent, env_field("WSKEY_rotated_0123456789a")) == with_env(
            stored, env_field("WSKEY_rotated_0123456789a")
        )

    def test_foreign_bytes_are_sent_as_they_are(self) -> None:
        assert with_env(b'{"event": "x"}', env_field(KEY)) == b'{"event": "x"}'

    @settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
    @given(
        records=st.lists(
            st.one_of(
                st.builds(
                    lambda d, p: accept(Event(d, "ev", p), sdk_version=SDK_VERSION).payload,
                    st.text(min_size=1, max_size=8).filter(str.strip),
                    st.dictionaries(
                        st.sampled_from(["env", "distinct_id", "a", 'x", "env": "y']),
                        st.one_of(
                            st.text(max_size=8),
                            st.dictionaries(
                                st.sampled_from(["distinct_id", "env"]),
                                st.integers(-(2**53) + 1, 2**53 - 1),
                                max_size=2,
                            ),
                        ),
                        max_size=3,
                    ),
                ),
                st.sampled_from(
                    [
                        b'{"event": "x"}',
                        b'{"distinct_id": "first"}',
                        b'{"a": 1, "env": "old", "distinct_id": "u"}',
                        b'{"a": 1, "distinct_id": "u", "b": {"c": 2, "distinct_id": 3}}',
                    ]
                ),
            ),
            min_size=1,
            max_size=12,
        ),
        env=st.sampled_from([KEY, 'u"i\\d']),
    )
    def test_bulk_body_is_each_record_as_sent(self, records: list[bytes], env: str) -> None:
        """The bulk body spliced in one pass equals the records spliced one by one,
        whatever they hold: nested ``distinct_id``/``env`` keys, foreign bytes, an old env."""
        field = env_field(env)
        assert (
            bulk_body(records, field)
            == b"[" + b", ".join([with_env(r, field) for r in records]) + b"]"
        )


class TestAcceptedOnce:
    """A producer's own event is validated once and serialised once; an ``Event`` the
    caller kept (or a hook held) is checked again at accept."""

    def test_fields_are_checked_once(self, celery_app: Any, monkeypatch: Any) -> None:
        """``buffer_event(fields)`` checks its properties once; ``buffer_event(event)``
        twice (at construction, and at accept, since the caller may have changed them)."""
        from suprsend_celery import buffer_event
        from suprsend_celery.events import model, validation

        calls: list[object] = []
        original = validation.check_properties

        def counted(value: object) -> dict[str, Any]:
            calls.append(value)
            return original(value)

        monkeypatch.setattr(model, "check_properties", counted)
        monkeypatch.setattr(model.Event.__dict__["properties"], "check", counted)
        buffer_event("u", "order_placed", {"n": 1}, app=celery_app)
        assert len(calls) == 1
        calls.clear()
        event = Event("u", "order_placed", {"n": 1})
        event.properties["$sneaky"] = 1
        with pytest.raises(InvalidEventError, match="sneaky"):
            buffer_event(event, app=celery_app)
        assert len(calls) == 2

    def test_the_events_own_properties_stay_as_they_were(self) -> None:
        """Accepting adds ``$ss_sdk_version`` to the record, not to the event."""
        event = Event("u", "ev", {"a": 1})
        accept(event, sdk_version="x", checked=True)
        assert event.properties == {"a": 1}

    def test_insert_ids_are_uuid4(self) -> None:
        from suprsend_celery.events.model import new_insert_id

        ids = {new_insert_id() for _ in range(1000)}
        assert len(ids) == 1000
        for text in list(ids)[:50]:
            parsed = uuid.UUID(text)
            assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)

    def test_reserved_prefixes_in_any_case(self) -> None:
        for key in ("$x", "ss_x", "SS_x", "sS_x", "Ss_x"):
            refused("properties", lambda k=key: accept_event(Event("u", "ev", {k: 1})))
        assert record_of(Event("u", "ev", {"s_x": 1, "ssx": 2}))["properties"]["ssx"] == 2
