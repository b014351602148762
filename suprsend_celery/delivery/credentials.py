"""Workspace credentials, in either of suprsend-py-sdk 0.20.0's two modes, and their headers.

- ``"hmac"``: workspace key + secret; every request is signed
  (``Authorization: <key>:<base64 HMAC-SHA256>`` over method, body md5, content type,
  ``Date`` and path) and records carry the workspace key as ``env``.
- ``"api_key"``: workspace UID + API key (``Suprsend.with_workspace_api_key``); the body
  is sent unsigned with ``Authorization: Bearer <api key>`` and no ``Date``, and records
  carry the workspace UID as ``env``.

``Credentials.env`` is the one place a record's ``env`` comes from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import platform
from dataclasses import dataclass, field
from typing import Literal

from ..__about__ import __version__
from ..exceptions import ConfigurationError

__all__ = ["CONTENT_TYPE", "AuthMode", "Credentials", "client_user_agent", "sign"]

CONTENT_TYPE = "application/json; charset=utf-8"

AuthMode = Literal["hmac", "api_key"]


def sign(secret: str, body: bytes, date: str, path_and_query: str) -> str:
    """Return the base64 HMAC-SHA256 signature SuprSend expects for a POST."""
    string_to_sign = (
        f"POST\n{hashlib.md5(body).hexdigest()}\n{CONTENT_TYPE}\n{date}\n{path_and_query}"  # noqa: S324 - the protocol's choice
    )
    digest = hmac.new(secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode("ascii")


def client_user_agent() -> str:
    """The ``X-Suprsend-Client-User-Agent`` value: the SDK's JSON layout, naming this package.

    suprsend-py-sdk 0.20.0 sends ``json.dumps`` of ``{sdk, sdk_version, lang,
    lang_version, platform, os, os_version, app_info}`` in that order; so do we.
    """
    try:
        uname = platform.uname()
        system, release = (uname.system or "").lower(), (uname.release or "").lower()
    except OSError:  # pragma: no cover - platform lookups can fail in odd sandboxes
        system, release = "(disabled)", "(disabled)"
    return json.dumps(
        {
            "sdk": "suprsend-celery",
            "sdk_version": __version__,
            "lang": "python",
            "lang_version": platform.python_version(),
            "platform": "server",
            "os": system,
            "os_version": release,
            "app_info": None,
        }
    )


@dataclass(frozen=True, slots=True)
class Credentials:
    """One workspace's credentials; the secret part is never shown in reprs or errors."""

    mode: AuthMode
    #: The workspace key (HMAC) or workspace UID (API key): what records carry as ``env``.
    env: str
    secret: str = field(repr=False)

    @classmethod
    def from_key_secret(cls, workspace_key: object, workspace_secret: object) -> Credentials:
        return cls(
            "hmac",
            _required(workspace_key, "workspace_key"),
            _required(workspace_secret, "workspace_secret"),
        )

    @classmethod
    def from_api_key(cls, workspace_uid: object, api_key: object) -> Credentials:
        return cls(
            "api_key", _required(workspace_uid, "workspace_uid"), _required(api_key, "api_key")
        )

    @property
    def setting_names(self) -> str:
        """The two settings that hold these credentials, for error messages."""
        if self.mode == "api_key":
            return "suprsend_workspace_uid and suprsend_api_key"
        return "suprsend_workspace_key and suprsend_workspace_secret"

    def authorize(self, headers: dict[str, str], body: bytes, path: str, date: str) -> None:
        """Add this mode's authentication headers for a POST of ``body`` to ``path``."""
        if self.mode == "api_key":
            headers["Authorization"] = f"Bearer {self.secret}"
            return
        headers["Date"] = date
        headers["Authorization"] = f"{self.env}:{sign(self.secret, body, date, path)}"


def _required(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} is required (suprsend_{name})")
    return value.strip()
