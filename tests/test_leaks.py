"""Smaller leaks and gaps of issue 10 item 8: passwords in URLs, Event attributes changed
after construction, a Mapping whose ``items()`` raises. (The sandbox command's hidden
secret is tested in test_sandbox.py, TestCommand.)"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from _buffer_helpers import buffer_of
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from suprsend_celery import Event, InvalidEventError, buffer_event
from suprsend_celery.delivery.routing import mask_url
from suprsend_celery.events.model import accept
from suprsend_celery.exceptions import ConfigurationError
from suprsend_celery.pipeline.settings import load_settings

# Passwords as people type them: symbols included, ``@`` and ``/`` unescaped.
PASSWORDS = st.text(
    alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "S"], exclude_characters="#"),
    min_size=8,
    max_size=24,
)
TEMPLATES = [
    "redis://:{pw}@cache.internal:6379/0",
    "redis://default:{pw}@cache.internal:6379/0",
    "rediss://app:{pw}@cache.internal:6380/1?ssl_cert_reqs=none",
    "redis:/:{pw}@cache.internal:6379/0",  # the scheme typo of the issue
    "redis://cache.internal:6379/0?password={pw}",
    "redis://cache.internal:6379/0?db=2&password={pw}&client_name=web",
    "unix:///run/redis.sock?db=0&password={pw}",
    "amqp://guest:{pw}@rabbit.internal:5672//",
]


class TestMaskUrl:
    @settings(max_examples=300)
    @given(password=PASSWORDS, template=st.sampled_from(TEMPLATES), quoted=st.booleans())
    def test_no_password_survives(self, password: str, template: str, quoted: bool) -> None:
        """Whatever the password holds, as typed or percent-encoded, none of it is shown."""
        in_query = "?" in template.split("{pw}", maxsplit=1)[0]  # a query value must be encoded
        written = quote(password, safe="") if quoted or in_query else password
        url = template.format(pw=written)
        rest = template.replace("{pw}", "")
        assume(password not in rest and written not in rest)
        masked = mask_url(url)
        assert written not in masked
        assert password not in masked
        assert "***" in masked

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("redis:/:PW-secret-1@h:6379/0", "redis:/:***@h:6379/0"),
            ("redis://:p@ss-word@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
            ("redis://u:pw@h:6379/0", "redis://u:***@h:6379/0"),
            ("redis://h:6379/0", "redis://h:6379/0"),
        ],
    )
    def test_the_issue_cases(self, url: str, expected: str) -> None:
        assert mask_url(url) == expected

    def test_configuration_errors_mask_the_url(self) -> None:
        """A refused Redis URL in an error message shows no password."""
        conf = {
            "suprsend_workspace_key": "WSKEY_mask_0123456789",
            "suprsend_workspace_secret": "WSSECRET_mask",
            "suprsend_redis_url": "redis:/:hunter2-pw@h:6379/0",
        }
        with pytest.raises(ConfigurationError) as info:
            load_settings(conf)
        assert "hunter2-pw" not in str(info.value)


class TestEventAttributes:
    """Setting an attribute after construction is checked like the constructor's argument."""

    @pytest.mark.parametrize(
        ("name", "value", "field"),
        [
            ("event_name", "$sneaky", "event_name"),
            ("event_name", "x", "event_name"),
            ("distinct_id", "  ", "distinct_id"),
            ("distinct_id", True, "distinct_id"),
            ("properties", {"$x": 1}, "properties"),
            ("properties", [1], "properties"),
            ("idempotency_key", "", "idempotency_key"),
            ("tenant_id", "t" * 65, "tenant_id"),
            ("brand_id", 7, "brand_id"),
        ],
    )
    def test_bad_values_are_refused_when_set(self, name: str, value: Any, field: str) -> None:
        event = Event("u1", "order_placed")
        with pytest.raises(InvalidEventError) as info:
            setattr(event, name, value)
        assert info.value.field == field
        assert event.event_name == "order_placed"  # the event is unchanged

    def test_good_values_are_normalised_when_set(self) -> None:
        event = Event("u1", "order_placed")
        event.distinct_id = 42  # type: ignore[assignment]
        event.event_name = "  order_shipped "
        event.idempotency_key = " k-1 "
        assert (event.distinct_id, event.event_name, event.idempotency_key) == (
            "42",
            "order_shipped",
            "k-1",
        )

    def test_a_dollar_name_set_later_is_never_buffered(self, celery_app: Any) -> None:
        """The issue's case: a ``$`` name set after construction was accepted and sent."""
        event = Event("u1", "order_placed")
        with pytest.raises(InvalidEventError):
            event.event_name = "$sneaky"
        buffer_event(event, app=celery_app)
        [stored] = buffer_of(celery_app).redis.lrange(buffer_of(celery_app).keys.pending, 0, -1)
        assert b'"event": "order_placed"' in stored


class _Exploding(dict[str, Any]):
    def items(self) -> Any:
        raise KeyError("boom")


class TestMappingThatRaises:
    def test_top_level_properties(self) -> None:
        with pytest.raises(InvalidEventError) as info:
            Event("u1", "order_placed", _Exploding(a=1))
        assert info.value.field == "properties"
        assert "KeyError" in str(info.value)

    def test_nested_value(self) -> None:
        event = Event("u1", "order_placed", {"cart": _Exploding(a=1)})
        with pytest.raises(InvalidEventError) as info:
            accept(event, sdk_version="t")
        assert info.value.field == "properties"
