"""API-key (Bearer) mode: the SDK's ``with_workspace_api_key`` requests, byte for byte.

Golden tests capture our requests and the official SDK's on the same loopback server
and compare them; the sandbox is then shown to check the Bearer header and ``env`` as
strictly as it checks signatures, and the whole pipeline runs in this mode.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from celery import Celery
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, in_process_worker
from suprsend import Event as SdkEvent
from suprsend import Suprsend
from test_client import Captured, RawServer, json_response

from suprsend_celery import (
    ConfigurationError,
    Event,
    SuprsendClient,
    buffer_event,
    flush_buffer,
    track_event,
)
from suprsend_celery.delivery.client import CLIENT_USER_AGENT, USER_AGENT
from suprsend_celery.delivery.credentials import CONTENT_TYPE, sign
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.records import env_field, with_env

UID = "ws_uid_apikey_0123456789"
API_KEY = "SSAPIKEY_test_do_not_print_0123"

#: Headers the HTTP libraries add on their own (requests adds Accept; both add these).
_TRANSPORT = {"Host", "Content-Length", "Accept-Encoding", "Accept", "Connection"}


def own_headers(request: Captured) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k not in _TRANSPORT}


@pytest.fixture
def raw() -> Iterator[RawServer]:
    with RawServer() as server:
        yield server


@pytest.fixture(scope="module")
def bearer_sandbox() -> Iterator[Sandbox]:
    with Sandbox(WORKSPACE_KEY, WORKSPACE_SECRET, workspace_uid=UID, api_key=API_KEY) as sb:
        yield sb


@pytest.fixture
def sb(bearer_sandbox: Sandbox) -> Sandbox:
    bearer_sandbox.reset()
    return bearer_sandbox


def api_client(base_url: str) -> SuprsendClient:
    return SuprsendClient.with_workspace_api_key(UID, API_KEY, base_url=base_url, timeout=5)


class TestGoldenRequests:
    """Our API-key requests, captured on the wire, are the SDK's in that mode."""

    def sdk_and_ours(self, raw: RawServer, build: Callable[[Any], None]) -> tuple[Captured, ...]:
        sdk = Suprsend.with_workspace_api_key(UID, API_KEY, base_url=raw.url)
        build(sdk)
        client = api_client(raw.url)
        try:
            build(client)
        finally:
            client.close()
        sdk_request, ours = raw.captured
        return sdk_request, ours

    def test_single_event(self, raw: RawServer) -> None:
        """Same path, same header set and values, same record fields in the same order."""

        def build(who: Any) -> None:
            args = ("Zoë", "order_placed", {"city": "東京", "n": 1.5})
            scope = {"idempotency_key": "order-1", "tenant_id": "t1", "brand_id": "b1"}
            if isinstance(who, Suprsend):
                who.track_event(SdkEvent(*args, **scope))
            else:
                who.send_event(Event(*args, **scope))

        sdk_request, ours = self.sdk_and_ours(raw, build)
        assert ours.path == sdk_request.path == "/v2/event/"
        sdk_headers, our_headers = own_headers(sdk_request), own_headers(ours)
        # Same names (their order on the wire is requests' merge order, not the SDK's).
        assert set(our_headers) == set(sdk_headers)
        assert our_headers["Authorization"] == sdk_headers["Authorization"] == f"Bearer {API_KEY}"
        assert our_headers["Content-Type"] == sdk_headers["Content-Type"]
        assert "Date" not in our_headers
        assert our_headers["User-Agent"] == USER_AGENT
        sdk_record, our_record = json.loads(sdk_request.body), json.loads(ours.body)
        assert list(our_record) == list(sdk_record)
        assert our_record["env"] == sdk_record["env"] == UID
        for name in ("event", "distinct_id", "$idempotency_key", "tenant_id", "brand_id"):
            assert our_record[name] == sdk_record[name]
        assert list(our_record["properties"]) == list(sdk_record["properties"])

    def test_body_bytes_are_the_sdks(self, raw: RawServer) -> None:
        """Given our record, the SDK's API-key request has exactly our body and headers."""
        client = api_client(raw.url)
        accepted = client.accept(Event("u1", "signed_up", {"plan": "pro", "€": [1, 2.5]}))
        client.send_event(accepted)
        raw.default = json_response(207, {"records": [{"status": "success"}] * 2})
        bulk = [client.accept(Event(f"u{i}", "bulk_ev", {"i": i})) for i in range(2)]
        client.send_bulk(bulk)
        client.close()
        single, many = raw.captured
        sdk = Suprsend.with_workspace_api_key(UID, API_KEY, base_url=raw.url)
        for request, route in ((single, "v2/event/"), (many, "v2/bulk/event/")):
            obj = json.loads(request.body)
            headers, content = sdk.prepare_request("POST", raw.url + route, obj)
            assert content.encode("utf-8") == request.body
            ours = own_headers(request)
            assert set(ours) == set(headers)
            assert ours["Authorization"] == headers["Authorization"]
            assert ours["Content-Type"] == headers["Content-Type"]
        assert single.body == client.as_sent(accepted.payload)
        assert many.body == b"[" + b", ".join(client.as_sent(a.payload) for a in bulk) + b"]"

    @pytest.mark.parametrize("mode", ["hmac", "api_key"])
    def test_client_user_agent_header(self, raw: RawServer, mode: str) -> None:
        """Both modes send X-Suprsend-Client-User-Agent in the SDK's layout, naming us."""
        if mode == "hmac":
            client = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=raw.url)
        else:
            client = api_client(raw.url)
        client.send_event(Event("u", "ev"))
        client.close()
        Suprsend(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=raw.url).track_event(SdkEvent("u", "ev"))
        ours, sdk_request = raw.captured
        assert ours.headers["X-Suprsend-Client-User-Agent"] == CLIENT_USER_AGENT
        our_info = json.loads(CLIENT_USER_AGENT)
        sdk_info = json.loads(sdk_request.headers["X-Suprsend-Client-User-Agent"])
        assert list(our_info) == list(sdk_info)
        assert (our_info["sdk"], sdk_info["sdk"]) == ("suprsend-celery", "suprsend-py-sdk")
        for name in ("lang", "lang_version", "platform", "os", "os_version", "app_info"):
            assert our_info[name] == sdk_info[name]


class TestSandboxBearer:
    """The sandbox checks the Bearer header and ``env`` exactly as it checks signatures."""

    def test_sdk_in_api_key_mode_is_accepted(self, sb: Sandbox) -> None:
        """The official SDK with ``with_workspace_api_key`` gets 202 and its record is kept."""
        sdk = Suprsend.with_workspace_api_key(UID, API_KEY, base_url=sb.url)
        response = sdk.track_event(SdkEvent("u1", "signed_up", idempotency_key="k1"))
        assert response["status_code"] == 202
        (stored,) = sb.events()
        assert stored["env"] == UID
        assert sb.stats()["auth_failures"] == 0

    def test_our_client_is_accepted(self, sb: Sandbox) -> None:
        """Our API-key client's single and bulk sends are processed."""
        client = api_client(sb.url)
        assert client.send_event(Event("u1", "signed_up"))["status_code"] == 202
        assert client.send_bulk([Event(f"u{i}", "bulk_ev") for i in range(3)]).succeeded == 3
        client.close()
        assert [e["env"] for e in sb.events()] == [UID] * 4

    @pytest.mark.parametrize(
        "authorization",
        ["Bearer SSAPIKEY_wrong", "Bearer ", f"Bearer {API_KEY}x", f"Basic {API_KEY}"],
    )
    def test_wrong_api_key_is_401(self, sb: Sandbox, authorization: str) -> None:
        """A wrong, empty or differently-schemed key is refused and nothing is stored."""
        body = json.dumps({"event": "x"}).encode()
        response = requests.post(
            sb.url + "v2/event/",
            data=body,
            headers={"Authorization": authorization, "Content-Type": "application/json"},
            timeout=5,
        )
        assert response.status_code == 401
        assert sb.stats()["auth_failures"] == 1
        assert sb.events() == []

    @staticmethod
    def record_with_env(env: str) -> bytes:
        """A stored record with ``env`` spliced in by hand, as no client of ours would send."""
        stored = api_client("http://127.0.0.1:1/").accept(Event("u1", "signed_up")).payload
        return with_env(stored, env_field(env))

    def test_env_must_be_the_uid_under_bearer(self, sb: Sandbox) -> None:
        """A Bearer request whose record carries the workspace key (not the UID) is refused."""
        response = requests.post(
            sb.url + "v2/event/",
            data=self.record_with_env(WORKSPACE_KEY),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": CONTENT_TYPE},
            timeout=5,
        )
        assert response.status_code == 400
        assert "env" in response.text
        assert sb.stats()["rejected"] == 1

    def test_env_must_be_the_key_when_signed(self, sb: Sandbox) -> None:
        """A signed request whose record carries the UID is refused: env follows the mode."""
        body = self.record_with_env(UID)
        date = email.utils.formatdate(usegmt=True)
        signature = sign(WORKSPACE_SECRET, body, date, "/v2/event/")
        response = requests.post(
            sb.url + "v2/event/",
            data=body,
            headers={
                "Authorization": f"{WORKSPACE_KEY}:{signature}",
                "Content-Type": CONTENT_TYPE,
                "Date": date,
            },
            timeout=5,
        )
        assert response.status_code == 400
        assert "env" in response.text
        assert sb.events() == []

    def test_our_clients_set_env_from_their_own_credentials(self, sb: Sandbox) -> None:
        """A record accepted by one mode's client and sent by the other's carries the sender's."""
        record = SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=sb.url).accept(
            Event("u1", "signed_up")
        )
        api_client(sb.url).send_event(record)
        assert [e["env"] for e in sb.events()] == [UID]

    def test_refusal_names_the_api_key_settings(self, sb: Sandbox) -> None:
        """A 401 in API-key mode points at the API-key settings and never shows the key."""
        client = SuprsendClient.with_workspace_api_key(UID, "SSAPIKEY_wrong_one", base_url=sb.url)
        with pytest.raises(Exception) as info:
            client.send_event(Event("u1", "signed_up"))
        client.close()
        message = str(info.value)
        assert "suprsend_workspace_uid and suprsend_api_key" in message
        assert "SSAPIKEY_wrong_one" not in message

    def test_api_key_never_in_repr(self) -> None:
        """The client's repr names the workspace UID, never the key."""
        client = api_client("http://127.0.0.1:9/")
        assert UID in repr(client)
        assert API_KEY not in repr(client)
        assert API_KEY not in repr(client.credentials)
        assert client.workspace_key is None

    def test_construction_refused_without_both(self) -> None:
        """A missing UID or key is a ConfigurationError naming it."""
        with pytest.raises(ConfigurationError, match="workspace_uid"):
            SuprsendClient.with_workspace_api_key("", API_KEY)
        with pytest.raises(ConfigurationError, match="api_key"):
            SuprsendClient.with_workspace_api_key(UID, " ")


class TestPipeline:
    """Both paths, configured only with a workspace UID and API key."""

    def test_buffered_and_direct(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Buffered records and a direct task both arrive with env = the workspace UID."""
        app = app_factory(
            suprsend_workspace_key=None,
            suprsend_workspace_secret=None,
            suprsend_workspace_uid=sandbox.workspace_uid,
            suprsend_api_key=sandbox.api_key,
        )
        keys = [buffer_event(f"u{i}", "buffered_ev") for i in range(3)]
        assert flush_buffer.apply(kwargs={"time_budget": 5}).get()["sent"] == 3
        with in_process_worker(app):
            sent = track_event.delay("u9", "direct_ev")
            assert sent.get(timeout=15)["status"] == "success"
        events = sandbox.events()
        assert [e["env"] for e in events] == [sandbox.workspace_uid] * 4
        assert [e["$idempotency_key"] for e in events[:3]] == keys
        assert sandbox.stats()["auth_failures"] == 0
