"""How the client reaches the API: an optional forward proxy and the CAs that verify TLS.

Settings win over the environment; without them the standard variables apply, read
once when the client is built (a worker's start):

- proxy: ``suprsend_proxy_url``, else ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``
  for the API's scheme (either case), unless ``NO_PROXY`` lists the API host.
- CAs: ``suprsend_ca_bundle`` (a file or a directory), else ``REQUESTS_CA_BUNDLE``,
  ``CURL_CA_BUNDLE``, ``SSL_CERT_FILE`` or ``SSL_CERT_DIR``, else certifi's bundle
  (requests' default).

An ``https://`` API goes through the proxy in a ``CONNECT`` tunnel (TLS end to end,
verified against the API's certificate); an ``http://`` one (the sandbox) is forwarded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from requests.utils import get_environ_proxies, prepend_scheme_if_needed, select_proxy

__all__ = ["CA_ENV", "Route", "forwarded", "mask_url", "route_for"]

#: Environment variables naming a CA bundle (file) or directory, in order of precedence.
CA_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


@dataclass(frozen=True, slots=True)
class Route:
    """The proxy URL (or None) and the CAs (True: certifi's bundle; a file or directory)."""

    proxy: str | None = None
    verify: bool | str = True

    def __repr__(self) -> str:
        proxy = mask_url(self.proxy) if self.proxy else None
        return f"Route(proxy={proxy!r}, verify={self.verify!r})"


def route_for(url: str, proxy_url: str | None = None, ca_bundle: str | None = None) -> Route:
    """The route to ``url``: the settings' proxy and CAs, else the environment's."""
    proxy = proxy_url or select_proxy(url, get_environ_proxies(url)) or None
    if proxy is not None:
        # "host:3128" is http://, as in requests (untyped in types-requests).
        proxy = str(prepend_scheme_if_needed(proxy, "http"))  # type: ignore[no-untyped-call]
    verify: bool | str = ca_bundle or next(
        (os.environ[name] for name in CA_ENV if os.environ.get(name)), True
    )
    return Route(proxy, verify)


def forwarded(url: str, route: Route) -> bool:
    """Whether requests to ``url`` go to the proxy as absolute URLs (plain HTTP)."""
    return route.proxy is not None and urlsplit(url).scheme == "http"


def mask_url(url: str) -> str:
    """A URL with every password replaced by ``***``, fit for logs and error messages
    (every URL of a ``;``-separated Sentinel list).

    Masks the userinfo (``redis://user:***@host``) up to the *last* ``@``, so an
    unescaped ``@`` or ``/`` in a password and a mistyped ``redis:/:PW@host`` are
    masked too, and query parameters that carry secrets (``?password=``). When in
    doubt it masks more, never less.
    """
    parts = url.split(";")
    if len(parts) > 1 and all("://" in part for part in parts):  # not a ";" in a password
        return ";".join(mask_url(part) for part in parts)
    scheme, sep, rest = url.partition(":")
    if not sep:
        return url
    rest, hashmark, fragment = rest.partition("#")
    at = rest.rfind("@")
    if at >= 0:
        lead = len(rest) - len(rest.lstrip("/"))
        user, colon, _ = rest[lead:at].partition(":")
        rest = rest[:lead] + (f"{user}:***" if colon else "***") + rest[at:]
    base, qmark, query = rest.partition("?")
    if qmark:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _is_secret(k) else v) for k, v in pairs], safe="*")
    return f"{scheme}:{base}{qmark}{query}" + (f"#{fragment}" if hashmark else "")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in ("pass", "pwd", "secret", "token", "key"))
