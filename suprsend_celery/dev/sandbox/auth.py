"""Server-side check of SuprSend's HMAC request signature.

Written independently of :mod:`suprsend_celery.delivery.client` on purpose: the sandbox is the
referee for our client, so it must not share (and silently agree with) its signing
code. The scheme is the one suprsend-py-sdk 0.20.0 uses::

    Authorization: <workspace_key>:<base64(HMAC-SHA256(secret, string_to_sign))>
    string_to_sign = "POST\\n" + md5hex(body) + "\\n" + Content-Type + "\\n" + Date + "\\n" + path

with the Content-Type and Date headers exactly as the request carried them and the
path including its query string. In API-key mode (the SDK's ``with_workspace_api_key``)
the body is unsigned and the header is ``Authorization: Bearer <api_key>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime

__all__ = [
    "MAX_CLOCK_SKEW",
    "check_request",
    "is_bearer",
    "signature_for",
    "string_to_sign",
    "verify_signature",
]

#: How far (seconds) a request's Date header may be from the server clock.
MAX_CLOCK_SKEW = 15 * 60.0


def string_to_sign(method: str, body_md5: str, content_type: str, date: str, path: str) -> str:
    """The exact text the client signs; ``body_md5`` is the hex MD5 of the raw body."""
    return f"{method}\n{body_md5}\n{content_type}\n{date}\n{path}"


def signature_for(
    secret: str, body_md5: str, content_type: str, date: str, path: str, *, method: str = "POST"
) -> str:
    """The base64 signature a correct client sends for these request parts."""
    message = string_to_sign(method, body_md5, content_type, date, path)
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(
    secret: str, signature: str, body_md5: str, content_type: str, date: str, path: str
) -> bool:
    """Whether ``signature`` is the one ``secret`` gives for a POST with these parts."""
    expected = signature_for(secret, body_md5, content_type, date, path)
    return hmac.compare_digest(expected.encode(), signature.encode())


def is_bearer(authorization: str | None) -> bool:
    """Whether the header uses API-key mode (``Bearer <api_key>``) rather than a signature."""
    if not authorization:
        return False
    return authorization.lstrip()[:7].lower() == "bearer "


def check_request(
    *,
    workspace_key: str,
    workspace_secret: str,
    authorization: str | None,
    date: str | None,
    content_type: str | None,
    path: str,
    body: bytes,
    max_clock_skew: float = MAX_CLOCK_SKEW,
    now: float | None = None,
    api_key: str | None = None,
) -> str | None:
    """Return why the request is not authentic, or ``None`` when it is."""
    if not authorization:
        return "missing Authorization header"
    if is_bearer(authorization):
        token = authorization.strip()[7:].strip()
        if api_key is None:
            return "API-key (Bearer) authentication is not enabled on this server"
        if not token or not hmac.compare_digest(token.encode(), api_key.encode()):
            return "unknown API key"
        return None
    key, sep, signature = authorization.strip().rpartition(":")
    if not sep or not key or not signature:
        return "Authorization header must be '<workspace_key>:<signature>'"
    if not hmac.compare_digest(key.encode(), workspace_key.encode()):
        return "unknown workspace key"
    if not date:
        return "missing Date header"
    try:
        sent = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return "Date header is not an HTTP date"
    skew = (time.time() if now is None else now) - sent
    if abs(skew) > max_clock_skew:
        return f"Date header is {skew:+.0f}s away from the server clock"
    body_md5 = hashlib.md5(body).hexdigest()  # noqa: S324 - the protocol's choice
    content_type = content_type or ""
    if not verify_signature(workspace_secret, signature, body_md5, content_type, date, path) and (
        # The SDK signs an empty body with an empty digest rather than md5(b"").
        body or not verify_signature(workspace_secret, signature, "", content_type, date, path)
    ):
        return "signature mismatch"
    return None
