"""pytest plugin: a ``suprsend_sandbox`` fixture, registered by the package's entry point.

One server per test session (starting it costs a thread and a port), reset before
each test so every test sees empty events, zeroed stats and no faults::

    def test_signup_sends_event(suprsend_sandbox, settings):
        settings.CELERY_SUPRSEND_BASE_URL = suprsend_sandbox.url
        ...
        suprsend_sandbox.wait_for(1)
        assert suprsend_sandbox.events()[0]["event"] == "signed_up"

Credentials are ``suprsend_sandbox.workspace_key`` / ``.workspace_secret`` (or, in
API-key mode, ``.workspace_uid`` / ``.api_key``). Only the
standard library is imported here, and lazily, since pytest loads this in every run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .server import Sandbox

__all__ = ["suprsend_sandbox", "suprsend_sandbox_session"]


@pytest.fixture(scope="session")
def suprsend_sandbox_session() -> Iterator[Sandbox]:
    """The session's sandbox server; prefer ``suprsend_sandbox``, which resets it."""
    from .server import Sandbox

    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def suprsend_sandbox(suprsend_sandbox_session: Sandbox) -> Iterator[Sandbox]:
    """A running sandbox with no events, zeroed stats and no fault plan."""
    suprsend_sandbox_session.reset()
    yield suprsend_sandbox_session
    suprsend_sandbox_session.reset()
