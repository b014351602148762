"""The client's HTTP seam: a request goes in, a response comes out, nothing else.

``SuprsendClient`` signs a request and reads the answer; *how* the bytes travel is a
transport's job, so a unit test can swap the network for a function (like httpx's
``MockTransport``)::

    def handler(request: HttpRequest) -> HttpResponse:
        assert request.headers["Authorization"].startswith("WSKEY_")
        return HttpResponse(202, body=b'{"status": "success", "message_id": "m1"}')

    client = SuprsendClient(key, secret, transport=MockTransport(handler))

A transport returns an ``HttpResponse`` for *any* HTTP answer (a 503 too) and raises
when none arrived: a ``TimeoutError`` when a timeout expired, any other ``OSError`` or
an ``http.client.HTTPException`` when the connection failed or the answer was not
HTTP. The client turns those into ``TransientDeliveryError`` naming only the
exception's type (its text may hold URLs), and statuses into the typed errors.

``SocketTransport``, the default, speaks HTTP/1.1 on the socket itself (a quarter of
urllib3's CPU per request); ``Urllib3Transport``, for a route through a proxy, sends
with urllib3's public pool API. Both keep one connection (pool) per thread and per
process (a forked child opens its own sockets), keep-alive, the CAs of a ``Route``, no
retries and no redirects (the caller decides).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import importlib.util
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import urllib3
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_auth_from_url

from .routing import Route, forwarded

__all__ = [
    "NO_RESPONSE",
    "TIMEOUTS",
    "HttpRequest",
    "HttpResponse",
    "HttpTransport",
    "MockTransport",
    "SocketTransport",
    "Urllib3Transport",
    "default_transport",
]

#: What a transport raises when a timeout expired before the answer (urllib3's own
#: timeout errors are not OSErrors).
TIMEOUTS: tuple[type[Exception], ...] = (TimeoutError, urllib3.exceptions.TimeoutError)
#: What a transport raises when no HTTP answer arrived (checked after ``TIMEOUTS``).
NO_RESPONSE: tuple[type[Exception], ...] = (
    OSError,
    http.client.HTTPException,
    urllib3.exceptions.HTTPError,
)


@dataclass(slots=True)  # not frozen: that would cost 0.6 µs more per request
class HttpRequest:
    """One request, exactly as signed: its body and headers are the bytes that go out."""

    method: str
    #: The absolute URL (``https://hub.suprsend.com/v2/event/``).
    url: str
    #: The path and query, as signed and as sent in the request line.
    path: str
    headers: Mapping[str, str]
    body: bytes
    #: ``(connect, read)`` seconds.
    timeout: tuple[float, float]


@dataclass(slots=True)
class HttpResponse:
    """An HTTP answer: status, headers (looked up case-insensitively) and the whole body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class HttpTransport(Protocol):
    """What ``SuprsendClient`` sends with (see the module docstring for the contract)."""

    def send(self, request: HttpRequest) -> HttpResponse:
        """Send one request; one call is one attempt, never retried or redirected."""
        ...

    def close(self) -> None:
        """Close this thread's connections; the transport stays usable."""
        ...

    def close_all(self) -> None:
        """Close every thread's connections in this process; the transport stays usable."""
        ...


class MockTransport:
    """A transport that answers every request with ``handler(request)``: for unit tests.

    The handler may also raise what a transport raises (``TimeoutError``,
    ``ConnectionResetError``...) to play a network failure. It is called from whichever
    thread sends (the flusher's request threads too).
    """

    def __init__(self, handler: Callable[[HttpRequest], HttpResponse]) -> None:
        self.handler = handler

    def send(self, request: HttpRequest) -> HttpResponse:
        response = self.handler(request)
        return replace(response, headers=CaseInsensitiveDict(response.headers))

    def close(self) -> None:
        """Nothing to close."""

    def close_all(self) -> None:
        """Nothing to close."""


class Urllib3Transport:
    """HTTP/1.1 over urllib3's connection pools, through a ``Route``'s proxy and CAs.

    Each thread has its own pool manager (so ``pool_size`` connections per thread, as
    with a ``requests.Session`` per thread); a forked child, or a thread after
    ``close_all()``, builds a new one on its next request. Requests go straight to the
    pool's ``urlopen``. Measured on loopback, a bulk request of 100 records costs about
    500 µs of CPU this way; ``requests.Session.post`` adds about 370 µs (+73%: URL,
    cookie, hook and header merging) and ``PoolManager.urlopen(url)`` about 45 µs.
    """

    def __init__(self, route: Route | None = None, *, pool_size: int = 10) -> None:
        #: The proxy and CAs every request uses.
        self.route = route or Route()
        self._pool_size = pool_size
        self._local = threading.local()
        self._pools: list[urllib3.HTTPConnectionPool] = []  # every thread's, for close_all()
        self._pools_lock = threading.Lock()
        self._generation = 0  # bumped by close_all(): every thread's manager is stale
        self._timeouts: dict[tuple[float, float], urllib3.Timeout] = {}

    def __repr__(self) -> str:
        return f"Urllib3Transport({self.route!r})"

    def send(self, request: HttpRequest) -> HttpResponse:
        pool, absolute = self._pool(request.url)
        timeout = self._timeouts.get(request.timeout)
        if timeout is None:
            connect, read = request.timeout
            timeout = self._timeouts[request.timeout] = urllib3.Timeout(connect=connect, read=read)
        response = pool.urlopen(
            request.method,
            request.url if absolute else request.path,  # a forward proxy takes absolute URLs
            body=request.body,
            headers=request.headers,
            retries=False,
            redirect=False,
            assert_same_host=False,  # forwarded: the pool's host is the proxy's
            timeout=timeout,
            preload_content=True,
        )
        return HttpResponse(response.status, response.headers, response.data)

    def pool(self, url: str) -> urllib3.HTTPConnectionPool:
        """This thread's connection pool for ``url`` (opened on first use)."""
        return self._pool(url)[0]

    def _pool(self, url: str) -> tuple[urllib3.HTTPConnectionPool, bool]:
        """``(pool, whether the request line carries the absolute URL)`` for ``url``."""
        local = self._local
        pools: dict[str, tuple[urllib3.HTTPConnectionPool, bool]] | None
        pools = getattr(local, "pools", None)
        if pools is None or local.pid != os.getpid() or local.generation != self._generation:
            generation = self._generation  # read first: a close_all() from now on is seen
            pools = local.pools = {}
            local.manager, local.pid, local.generation = self._manager(), os.getpid(), generation
        found = pools.get(url)
        if found is None:
            pool = local.manager.connection_from_url(url)
            with self._pools_lock:
                self._pools.append(pool)
            found = pools[url] = (pool, forwarded(url, self.route))
        return found

    def _manager(self) -> urllib3.PoolManager:
        """A pool manager for the route (the keywords requests' ``HTTPAdapter`` uses).

        CAs are loaded by each new connection, as requests does, so a bad path is a
        connection failure and a renewed bundle is read by the next connection.
        """
        verify = self.route.verify
        cafile = verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH  # certifi's
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
        tls["ca_cert_dir" if os.path.isdir(cafile) else "ca_certs"] = cafile
        options: dict[str, Any] = {"num_pools": 2, "maxsize": self._pool_size, "block": False}
        proxy = self.route.proxy
        if proxy is None:
            return urllib3.PoolManager(**options, **tls)
        user, password = get_auth_from_url(proxy)  # ("", "") unless both are given
        if proxy.lower().startswith("socks"):
            # Without PySocks, urllib3's module warns and fails on import: ask first.
            if importlib.util.find_spec("socks") is None:
                raise ConnectionError("a socks:// proxy needs PySocks")
            from urllib3.contrib.socks import SOCKSProxyManager

            return SOCKSProxyManager(proxy, user, password, **options, **tls)
        headers = {}
        if user:
            token = base64.b64encode(f"{user}:{password}".encode("latin-1")).decode("ascii")
            headers["Proxy-Authorization"] = f"Basic {token}"
        return urllib3.ProxyManager(proxy, proxy_headers=headers, **options, **tls)

    # Pools are closed one by one: urllib3 2.x's ``PoolManager.clear()`` forgets its
    # pools without closing their sockets.

    def close(self) -> None:
        pools = getattr(self._local, "pools", None) or {}
        self._local.pools = self._local.manager = None
        for pool, _ in pools.values():
            pool.close()

    def close_all(self) -> None:
        with self._pools_lock:
            pools, self._pools = self._pools, []
            self._generation += 1
        for pool in pools:
            pool.close()


class _Headers(dict[str, str]):
    """Response headers by lower-cased name, looked up case-insensitively."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


#: Bytes a response's status line and headers may take before it is refused.
_MAX_HEAD = 65536
_CRLF2 = b"\r\n\r\n"


class _Connection:
    """One keep-alive connection to one origin, used by one thread."""

    __slots__ = ("host", "host_header", "port", "rest", "sock", "tls", "verify")

    def __init__(self, host: str, port: int, tls: bool, verify: bool | str) -> None:
        self.host, self.port, self.tls, self.verify = host, port, tls, verify
        self.sock: socket.socket | None = None
        self.rest = b""  # bytes read past the last response (none, from a sane server)
        default = 443 if tls else 80
        self.host_header = host if port == default else f"{host}:{port}"
        if ":" in host:  # an IPv6 literal
            self.host_header = f"[{host}]" if port == default else f"[{host}]:{port}"

    def exchange(self, request: HttpRequest) -> HttpResponse:
        """Send ``request`` and read its answer; any failure closes the connection."""
        sock = self.sock
        if sock is None or _dropped(sock):
            self.close()
            sock = self.sock = self._connect(request.timeout[0])
        sock.settimeout(request.timeout[1])
        lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        lines.append(f"Content-Length: {len(request.body)}\r\n\r\n")
        try:
            sock.sendall("\r\n".join(lines).encode("latin-1") + request.body)
            response, keep = self._read(sock)
        except BaseException:
            self.close()
            raise
        if not keep:
            self.close()
        return response

    def close(self) -> None:
        sock, self.sock, self.rest = self.sock, None, b""
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __del__(self) -> None:
        # A thread that ends, or a client dropped without close(), lets its connections
        # go: close their sockets rather than leave them to the garbage collector.
        self.close()

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                # The CAs are read for each new connection, as requests does: a renewed
                # bundle is used by the next one, and a bad path is a connection failure.
                sock = _tls_context(self.verify).wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _read(self, sock: socket.socket) -> tuple[HttpResponse, bool]:
        """The next final response on ``sock`` and whether the connection stays open."""
        buf = self.rest
        while True:
            end = buf.find(_CRLF2)
            while end < 0:
                if len(buf) > _MAX_HEAD:
                    raise http.client.LineTooLong("response head")
                chunk = sock.recv(65536)
                if not chunk:
                    raise http.client.RemoteDisconnected("closed without an answer")
                buf += chunk
                end = buf.find(_CRLF2)
            head, buf = buf[:end].decode("latin-1"), buf[end + 4 :]
            status_line, *header_lines = head.split("\r\n")
            version, _, rest = status_line.partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/") or not code.isdigit():
                raise http.client.BadStatusLine(status_line[:100])
            status = int(code)
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue): the final one follows
            break
        headers = _Headers()
        for line in header_lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise http.client.HTTPException(f"malformed header line {line[:100]!r}")
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        if status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, buf = _read_chunked(sock, buf)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise http.client.HTTPException("malformed Content-Length") from None
            while len(buf) < length:
                chunk = sock.recv(max(65536, length - len(buf)))
                if not chunk:
                    raise http.client.IncompleteRead(buf, length - len(buf))
                buf += chunk
            body, buf = buf[:length], buf[length:]
        else:  # the body ends where the connection does
            while chunk := sock.recv(65536):
                buf += chunk
            body, buf, keep = buf, b"", False
        self.rest = buf
        return HttpResponse(status, headers, body), keep


def _read_chunked(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """A chunked body (and any trailers) from ``buf`` and then ``sock``; ``(body, rest)``."""
    parts: list[bytes] = []

    def line() -> bytes:
        nonlocal buf
        while (at := buf.find(b"\r\n")) < 0:
            if len(buf) > _MAX_HEAD:
                raise http.client.LineTooLong("chunk size")
            chunk = sock.recv(65536)
            if not chunk:
                raise http.client.IncompleteRead(b"".join(parts))
            buf += chunk
        text, buf = buf[:at], buf[at + 2 :]
        return text

    while True:
        size_text = line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise http.client.HTTPException("malformed chunk size") from None
        if size == 0:
            while line():  # trailers, up to the blank line
                pass
            return b"".join(parts), buf
        while len(buf) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise http.client.IncompleteRead(b"".join(parts))
            buf += chunk
        parts.append(buf[:size])
        buf = buf[size + 2 :]


def _dropped(sock: socket.socket) -> bool:
    """Whether a kept-alive connection was closed (or sent something unasked) since its
    last answer: readable before we asked anything. Then it is not reused."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _tls_context(verify: bool | str) -> ssl.SSLContext:
    """TLS for one connection: certificates checked against ``verify``'s CAs (certifi's
    bundle for True, as requests), with the host name; ``False`` checks nothing."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cafile = verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(cafile):
        return ssl.create_default_context(capath=cafile)
    return ssl.create_default_context(cafile=cafile)


class SocketTransport:
    """HTTP/1.1 on the socket itself, for an API reached without a proxy: the default.

    One keep-alive connection per thread and per origin (a forked child, or a thread
    after ``close_all()``, opens new ones), TLS with the route's CAs and the host name
    checked, ``Content-Length`` or chunked bodies, no retries and no redirects (the
    caller decides). A connection found closed by the server while idle is replaced
    before a request goes out on it. It exists for the flusher's CPU: on loopback, one
    bulk request of 100 records costs about 60 µs of CPU here, against about 270 µs
    through urllib3, most of it building http.client's response and parsing its
    headers with the email package. A route with a proxy goes through
    ``Urllib3Transport`` (``default_transport``).
    """

    def __init__(self, route: Route | None = None) -> None:
        #: The CAs every connection uses (a proxy is ``Urllib3Transport``'s job).
        self.route = route or Route()
        if self.route.proxy is not None:
            raise ValueError("SocketTransport does not go through proxies: Urllib3Transport")
        self._local = threading.local()
        self._connections: list[_Connection] = []  # every thread's, for close_all()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by close_all(): every thread's connections are stale

    def __repr__(self) -> str:
        return f"SocketTransport({self.route!r})"

    def send(self, request: HttpRequest) -> HttpResponse:
        return self.pool(request.url).exchange(request)

    def pool(self, url: str) -> _Connection:
        """This thread's connection to ``url``'s origin (opened on its first request)."""
        local = self._local
        conns: dict[str, _Connection] | None = getattr(local, "pools", None)
        if conns is None or local.pid != os.getpid() or local.generation != self._generation:
            generation = self._generation  # read first: a close_all() from now on is seen
            conns = local.pools = {}
            local.pid, local.generation = os.getpid(), generation
        origin = url[: url.find("/", url.find("//") + 2)] if url.count("/") > 2 else url
        conn = conns.get(origin)
        if conn is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            host = parts.hostname or ""
            conn = conns[origin] = _Connection(
                host, parts.port or (443 if tls else 80), tls, self.route.verify
            )
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        conns = getattr(self._local, "pools", None) or {}
        self._local.pools = None
        for conn in conns.values():
            conn.close()

    def close_all(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
            self._generation += 1
        for conn in conns:
            conn.close()


def default_transport(route: Route, *, pool_size: int = 10) -> HttpTransport:
    """``SocketTransport`` for a direct route; ``Urllib3Transport`` through a proxy."""
    if route.proxy is None:
        return SocketTransport(route)
    return Urllib3Transport(route, pool_size=pool_size)
