"""Proxies and private CAs: through a real forward proxy, to a sandbox served over TLS.

The proxy here is a small real one (threads, sockets): ``CONNECT`` tunnels for
``https://`` targets and absolute-URL forwarding for ``http://`` ones, recording what
it carried. The sandbox serves HTTPS with a certificate from a CA made for the test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from celery import Celery
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from suprsend_celery import (
    Event,
    SuprsendClient,
    TransientDeliveryError,
    buffer_event,
    flush_buffer,
)
from suprsend_celery.delivery.http import Urllib3Transport
from suprsend_celery.delivery.routing import CA_ENV, route_for
from suprsend_celery.dev.sandbox import Sandbox

PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA variable from the outer environment leaks into these tests."""
    for name in (*PROXY_ENV, *CA_ENV):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# -- a forward proxy ------------------------------------------------------------------------


@dataclass
class Carried:
    """What the proxy carried: CONNECT targets and forwarded request lines."""

    tunnels: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    proxy_auth: list[str | None] = field(default_factory=list)


def _read_head(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode()
    return None


class ForwardProxy:
    """A real HTTP proxy on loopback (one thread per connection)."""

    def __init__(self) -> None:
        self.carried = Carried()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []

    def __enter__(self) -> ForwardProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self._sock.close()
        for conn in list(self._open):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                self._open.append(conn)
                self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            head = _read_head(conn)
            if head is None:
                return
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            self.carried.proxy_auth.append(_header(head, b"proxy-authorization"))
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                self._open.append(upstream)
                self.carried.tunnels.append(target)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._spawn(_pipe, upstream, conn)
                _pipe(conn, upstream)
                return
            self._forward(conn, head)

    def _forward(self, conn: socket.socket, head: bytes) -> None:
        """Plain HTTP: each absolute-URL request goes upstream in origin form."""
        upstream: socket.socket | None = None
        while head is not None:
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode().split(" ", 2)
            url = urlsplit(target)
            self.carried.forwarded.append(f"{method} {target}")
            if upstream is None:
                upstream = socket.create_connection((url.hostname, url.port or 80))
                self._open.append(upstream)
            headers, _, body = rest.partition(b"\r\n\r\n")
            kept = [h for h in headers.split(b"\r\n") if not h.lower().startswith(b"proxy-")]
            length = int(_header(head, b"content-length") or 0)
            while len(body) < length:
                body += conn.recv(65536)
            upstream.sendall(
                f"{method} {url.path or '/'} {version}\r\n".encode()
                + b"\r\n".join(kept)
                + b"\r\n\r\n"
                + body
            )
            response = _read_head(upstream)
            assert response is not None
            answer_head, _, answer_body = response.partition(b"\r\n\r\n")
            answer_length = int(_header(answer_head + b"\r\n", b"content-length") or 0)
            while len(answer_body) < answer_length:
                answer_body += upstream.recv(65536)
            conn.sendall(answer_head + b"\r\n\r\n" + answer_body)
            head = _read_head(conn)  # keep-alive: the next request, if any
            if head is not None:
                self.carried.proxy_auth.append(_header(head, b"proxy-authorization"))


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


# -- a sandbox over TLS with a private CA ----------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tls_sandbox_server(ca: trustme.CA) -> Iterator[Sandbox]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with Sandbox(WORKSPACE_KEY, WORKSPACE_SECRET, ssl_context=context) as sb:
        yield sb


@pytest.fixture
def tls_sandbox(tls_sandbox_server: Sandbox) -> Sandbox:
    tls_sandbox_server.reset()
    return tls_sandbox_server


def client(base_url: str, **options: Any) -> SuprsendClient:
    return SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=base_url, timeout=5, **options)


def send_both_ways(c: SuprsendClient) -> None:
    """One single-event request and one bulk request."""
    try:
        assert c.send_event(Event("u1", "via_route"))["status_code"] == 202
        assert c.send_bulk([Event(f"u{i}", "via_route_bulk") for i in range(3)]).succeeded == 3
    finally:
        c.close()


class TestPrivateCa:
    """TLS to a server whose certificate only a private CA vouches for."""

    def test_refused_without_the_ca(self, tls_sandbox: Sandbox) -> None:
        """By default (certifi's bundle) the certificate is not trusted: nothing is sent."""
        c = client(tls_sandbox.url)
        with pytest.raises(TransientDeliveryError, match="connection failed"):
            c.send_event(Event("u1", "untrusted"))
        c.close()
        assert tls_sandbox.events() == []

    def test_setting(self, tls_sandbox: Sandbox, ca_file: str) -> None:
        """``ca_bundle`` (``suprsend_ca_bundle``) makes the private CA trusted."""
        send_both_ways(client(tls_sandbox.url, ca_bundle=ca_file))
        assert len(tls_sandbox.events()) == 4

    @pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
    def test_environment(
        self, tls_sandbox: Sandbox, ca_file: str, monkeypatch: pytest.MonkeyPatch, variable: str
    ) -> None:
        """The standard CA variables are honoured when no setting is given."""
        monkeypatch.setenv(variable, ca_file)
        send_both_ways(client(tls_sandbox.url))
        assert len(tls_sandbox.events()) == 4

    @pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to hash a CA dir")
    @pytest.mark.parametrize("how", ["setting", "SSL_CERT_DIR"])
    def test_directory(
        self,
        tls_sandbox: Sandbox,
        ca_file: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        how: str,
    ) -> None:
        """A directory of hashed certificates (``c_rehash`` layout) works as well as a file."""
        subject_hash = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", ca_file],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        shutil.copy(ca_file, tmp_path / f"{subject_hash}.0")
        if how == "setting":
            c = client(tls_sandbox.url, ca_bundle=str(tmp_path))
        else:
            monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
            c = client(tls_sandbox.url)
        send_both_ways(c)
        assert len(tls_sandbox.events()) == 4

    def test_default_is_certifi(self) -> None:
        """With no setting and no variable, certificates are checked against certifi's
        bundle (as requests does), not whatever the system store holds."""
        url = "https://hub.example.com/v2/event/"
        pool = Urllib3Transport(route_for(url)).pool(url)
        assert (pool.ca_certs, pool.cert_reqs) == (DEFAULT_CA_BUNDLE_PATH, "CERT_REQUIRED")


class TestProxy:
    """Every request goes through the proxy, over both of the client's paths."""

    def test_setting_tunnels_tls(
        self, proxy: ForwardProxy, tls_sandbox: Sandbox, ca_file: str
    ) -> None:
        """An https API is reached in a CONNECT tunnel; TLS is still verified end to end."""
        port = urlsplit(tls_sandbox.url).port
        send_both_ways(client(tls_sandbox.url, proxy_url=proxy.url, ca_bundle=ca_file))
        assert proxy.carried.tunnels == [f"127.0.0.1:{port}"]  # one kept-alive tunnel
        assert len(tls_sandbox.events()) == 4

    def test_proxy_credentials(self, proxy: ForwardProxy, sandbox: Sandbox) -> None:
        """Credentials in the proxy URL become Proxy-Authorization; the API never sees them."""
        url = proxy.url.replace("http://", "http://scott:tiger@")
        send_both_ways(client(sandbox.url, proxy_url=url))
        assert proxy.carried.proxy_auth[0] == "Basic c2NvdHQ6dGlnZXI="  # scott:tiger
        assert all(r.headers.get("Proxy-Authorization") is None for r in sandbox.requests())

    def test_environment_forwards_plain_http(
        self, proxy: ForwardProxy, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """HTTP_PROXY is honoured: an http API gets absolute-URL requests via the proxy."""
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        send_both_ways(client(sandbox.url))
        assert proxy.carried.forwarded == [
            f"POST {sandbox.url}v2/event/",
            f"POST {sandbox.url}v2/bulk/event/",
        ]
        assert len(sandbox.events()) == 4

    def test_no_proxy(
        self, proxy: ForwardProxy, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """NO_PROXY listing the API host bypasses the environment's proxy."""
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        send_both_ways(client(sandbox.url))
        assert proxy.carried == Carried()
        assert len(sandbox.events()) == 4

    def test_environment_without_scheme(
        self, proxy: ForwardProxy, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``HTTP_PROXY=host:port`` means an http:// proxy, as it does for requests."""
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removeprefix("http://"))
        send_both_ways(client(sandbox.url))
        assert len(proxy.carried.forwarded) == 2

    @pytest.mark.skipif(importlib.util.find_spec("socks") is not None, reason="PySocks installed")
    def test_socks_without_pysocks(self, sandbox: Sandbox) -> None:
        """A socks:// proxy without PySocks fails each send as a connection failure."""
        c = client(sandbox.url, proxy_url="socks5h://127.0.0.1:9")
        with pytest.raises(TransientDeliveryError, match="connection failed"):
            c.send_event(Event("u1", "via_socks"))
        assert sandbox.stats()["requests"] == 0

    def test_setting_wins_over_environment(
        self, proxy: ForwardProxy, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``proxy_url`` is used even when the environment names another (dead) proxy."""
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        send_both_ways(client(sandbox.url, proxy_url=proxy.url))
        assert len(proxy.carried.forwarded) == 2


def test_pipeline_through_proxy_and_tls(
    app_factory: Callable[..., Celery],
    proxy: ForwardProxy,
    tls_sandbox: Sandbox,
    ca_file: str,
    tmp_path: Path,
) -> None:
    """Settings wire both into the app's client: a buffered flush arrives over the tunnel."""
    app = app_factory(
        suprsend_base_url=tls_sandbox.url,
        suprsend_proxy_url=proxy.url,
        suprsend_ca_bundle=ca_file,
    )
    keys = [buffer_event(f"u{i}", "proxied_event") for i in range(5)]
    assert flush_buffer.apply(kwargs={"time_budget": 5}).get()["sent"] == 5
    assert [e["$idempotency_key"] for e in tls_sandbox.events()] == keys
    assert proxy.carried.tunnels
    assert app.conf.suprsend_proxy_url == proxy.url
