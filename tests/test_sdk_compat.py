"""The official suprsend-py-sdk 0.20.0 against the sandbox: the sandbox speaks its protocol.

If these pass, the sandbox verifies signatures and parses bodies the way SuprSend
does for the SDK, so it is a fair referee for our own client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import suprsend
from hypothesis import given, settings
from hypothesis import strategies as st
from suprsend import Event, Suprsend

from suprsend_celery.dev.sandbox import (
    Sandbox,
    signature_for,
    string_to_sign,
    validate_record,
    verify_signature,
)

KEY = "WSKEY_sdkcompat_0123456789"
SECRET = "WSSECRET_sdkcompat"

# The protocol's test vector (docs/protocol.md), taken from the official SDK.
VECTOR_KEY = "WSKEY_abcdefghij0123456789"
VECTOR_SECRET = "WSSECRET_0123456789abcdef"
VECTOR_DATE = "Thu, 01 Jan 2026 00:00:00 GMT"
VECTOR_PATH = "/v2/event/"
VECTOR_MD5 = "97c5d4dbf680d5ae18b5ab1a64c8b7ef"
VECTOR_CONTENT_TYPE = "application/json; charset=utf-8"
VECTOR_AUTHORIZATION = "WSKEY_abcdefghij0123456789:8WNYOgeftXtIg8iGf1DDS5FP+tblpl80o389i7IOSU8="


# The SDK's own schema for a track_event record, as shipped in its package.
_SCHEMA = jsonschema.Draft7Validator(
    json.loads((Path(suprsend.__file__).parent / "request_json" / "event.json").read_text())
)


def _text(min_size: int = 0, max_size: int = 300) -> st.SearchStrategy[str]:
    return st.text(min_size=min_size, max_size=max_size)


_ANY_VALUE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    _text(0, 5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(_text(1, 3), st.integers(), max_size=2),
)


_EDGY_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "$insert_id": st.one_of(_text(34, 38), _ANY_VALUE),
    "$time": st.one_of(
        st.integers(1640995199990, 1640995200010),
        st.floats(1640995199000.0, 1.9e12),
        _ANY_VALUE,
    ),
    "event": st.one_of(_text(0, 3), _ANY_VALUE),
    "env": st.one_of(st.sampled_from([KEY[:-1], KEY + "x", "x" * 19, "x" * 20]), _ANY_VALUE),
    "distinct_id": st.one_of(_text(0, 2), _ANY_VALUE),
    "properties": st.one_of(st.dictionaries(_text(1, 5), _ANY_VALUE, max_size=3), _ANY_VALUE),
    "$idempotency_key": st.one_of(_text(250, 260), _ANY_VALUE),
    "tenant_id": st.one_of(_text(60, 68), _ANY_VALUE),
    "brand_id": st.one_of(_text(60, 68), _ANY_VALUE),
}


@st.composite
def _records(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record with up to two fields removed or replaced by edge-case values."""
    record: dict[str, Any] = {
        "$insert_id": draw(_text(36, 40)),
        "$time": draw(st.integers(1640995200000, 2**53)),
        "event": draw(_text(2, 20)),
        "env": KEY,
        "distinct_id": draw(_text(1, 10)),
        "properties": draw(st.dictionaries(_text(1, 5), _ANY_VALUE, max_size=3)),
    }
    for name in ("$idempotency_key", "tenant_id", "brand_id"):
        if draw(st.booleans()):
            record[name] = draw(st.one_of(st.none(), _text(0, 64)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(_EDGY_FIELDS)))
        if draw(st.integers(0, 4)) == 0:
            record.pop(name, None)
        else:
            record[name] = draw(_EDGY_FIELDS[name])
    return record


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[Sandbox]:
    with Sandbox(workspace_key=KEY, workspace_secret=SECRET) as sb:
        yield sb


@pytest.fixture
def sb(sandbox_server: Sandbox) -> Sandbox:
    sandbox_server.reset()
    return sandbox_server


class TestSignatureVector:
    def test_string_to_sign_layout(self) -> None:
        """The signed text is verb, body md5, content type, date and path, one per line."""
        assert string_to_sign(
            "POST", VECTOR_MD5, VECTOR_CONTENT_TYPE, VECTOR_DATE, VECTOR_PATH
        ) == (f"POST\n{VECTOR_MD5}\n{VECTOR_CONTENT_TYPE}\n{VECTOR_DATE}\n{VECTOR_PATH}")

    def test_verifier_accepts_the_spec_vector(self) -> None:
        """The sandbox's verifier accepts exactly the SDK's signature for the vector."""
        key, _, signature = VECTOR_AUTHORIZATION.partition(":")
        assert key == VECTOR_KEY
        assert verify_signature(
            VECTOR_SECRET, signature, VECTOR_MD5, VECTOR_CONTENT_TYPE, VECTOR_DATE, VECTOR_PATH
        )
        assert (
            signature_for(VECTOR_SECRET, VECTOR_MD5, VECTOR_CONTENT_TYPE, VECTOR_DATE, VECTOR_PATH)
            == signature
        )

    @pytest.mark.parametrize(
        "change",
        [
            {"secret": VECTOR_SECRET + "x"},
            {"body_md5": "0" * 32},
            {"content_type": "application/json"},
            {"date": "Thu, 01 Jan 2026 00:00:01 GMT"},
            {"path": "/v2/bulk/event/"},
        ],
    )
    def test_verifier_rejects_any_other_input(self, change: dict[str, str]) -> None:
        """Changing any signed part invalidates the vector's signature."""
        parts = {
            "secret": VECTOR_SECRET,
            "body_md5": VECTOR_MD5,
            "content_type": VECTOR_CONTENT_TYPE,
            "date": VECTOR_DATE,
            "path": VECTOR_PATH,
        }
        parts.update(change)
        signature = VECTOR_AUTHORIZATION.partition(":")[2]
        assert not verify_signature(signature=signature, **parts)


class TestOfficialSdk:
    def test_track_event(self, sb: Sandbox) -> None:
        """``track_event`` succeeds and the sandbox stores the record the SDK built."""
        client = Suprsend(KEY, SECRET, base_url=sb.url)
        event = Event(
            "user-7",
            "order_placed",
            {"amount": 12.5, "city": "Zürich"},
            idempotency_key="order-7",
            tenant_id="acme",
        )
        resp = client.track_event(event)
        assert resp["success"] is True
        assert resp["status_code"] == 202
        (stored,) = sb.events()
        assert stored["event"] == "order_placed"
        assert stored["distinct_id"] == "user-7"
        assert stored["env"] == KEY
        assert stored["$idempotency_key"] == "order-7"
        assert stored["tenant_id"] == "acme"
        assert stored["properties"]["city"] == "Zürich"
        assert stored["properties"]["$ss_sdk_version"].startswith("suprsend-py-sdk/")
        assert resp["message"] == resp["raw_response"]["message_id"]

    def test_repeated_idempotency_key_is_deduplicated(self, sb: Sandbox) -> None:
        """The SDK resending with the same key gets success; the sandbox skips it."""
        client = Suprsend(KEY, SECRET, base_url=sb.url)
        first = client.track_event(Event("u", "signed_up", idempotency_key="su-1"))
        second = client.track_event(Event("u", "signed_up", idempotency_key="su-1"))
        assert first["success"] and second["success"]
        assert second["message"] == first["message"]
        assert len(sb.events()) == 1
        assert sb.stats()["duplicates_skipped"] == 1

    def test_bulk_events(self, sb: Sandbox) -> None:
        """Bulk sends (chunked by the SDK at 100) all succeed and arrive in order."""
        client = Suprsend(KEY, SECRET, base_url=sb.url)
        bulk = client.bulk_events.new_instance()
        bulk.append(*[Event(f"user-{i}", "bulk_tested", {"i": i}) for i in range(250)])
        response = bulk.trigger()
        assert response.status == "success"
        assert (response.total, response.success, response.failure) == (250, 250, 0)
        assert [e["properties"]["i"] for e in sb.events()] == list(range(250))
        assert [r.records for r in sb.requests()] == [100, 100, 50]
        assert all(r.status == 207 for r in sb.requests())

    def test_bulk_partial_failure_is_reported(self, sb: Sandbox) -> None:
        """Per-record errors from a fault plan reach the SDK's failed_records."""
        sb.set_faults([{"record_errors": [{"index": 1, "status": 400, "message": "nope"}]}])
        client = Suprsend(KEY, SECRET, base_url=sb.url)
        bulk = client.bulk_events.new_instance()
        bulk.append(*[Event(f"user-{i}", "bulk_tested") for i in range(3)])
        response = bulk.trigger()
        assert response.status == "partial"
        assert (response.success, response.failure) == (2, 1)
        assert response.failed_records[0]["error"] == "nope"
        assert response.failed_records[0]["code"] == 400

    def test_wrong_secret_gets_401(self, sb: Sandbox) -> None:
        """A wrong secret is refused with 401 and nothing is stored."""
        client = Suprsend(KEY, "WSSECRET_wrong", base_url=sb.url)
        resp = client.track_event(Event("u", "signed_up"))
        assert resp["success"] is False
        assert resp["status_code"] == 401
        bulk = client.bulk_events.new_instance()
        bulk.append(Event("u", "signed_up"))
        # The SDK reads "records" before looking at the status, so an error body on the
        # bulk route crashes it (one reason this package has its own client).
        with pytest.raises(KeyError, match="records"):
            bulk.trigger()
        assert [r.status for r in sb.requests()] == [401, 401]
        assert sb.events() == []
        assert sb.stats()["auth_failures"] == 2

    def test_wrong_workspace_key_gets_401(self, sb: Sandbox) -> None:
        """An SDK configured for another workspace is refused."""
        client = Suprsend("WSKEY_another_workspace_0001", SECRET, base_url=sb.url)
        assert client.track_event(Event("u", "signed_up"))["status_code"] == 401


class TestSchemaAgreement:
    """The sandbox's hand-written validator agrees with the SDK's own JSON schema."""

    @pytest.mark.slow
    @settings(max_examples=300, deadline=None)
    @given(record=_records())
    def test_validator_matches_schema(self, record: dict[str, Any]) -> None:
        """Any record: accepted by the sandbox iff the schema accepts it and env matches."""
        expected = _SCHEMA.is_valid(record) and record.get("env") == KEY
        assert (validate_record(record, KEY) is None) == expected
