"""A local SuprSend event API for development and tests.

``Sandbox`` runs it in a background thread (``with Sandbox() as sb: ... sb.url``),
``serve``/``main`` run it in the foreground (``suprsend-celery sandbox``,
``python -m suprsend_celery.sandbox``), and the ``suprsend_sandbox`` pytest fixture
(registered automatically by the package's pytest plugin) hands a clean one to each test.
Standard library only, so importing it is cheap.
"""

from .auth import check_request, is_bearer, signature_for, string_to_sign, verify_signature
from .command import main, serve
from .faults import FaultPlan, FaultPlanError, FaultRule, RecordErrorSpec
from .server import (
    BULK_PATH,
    DEFAULT_API_KEY,
    DEFAULT_WORKSPACE_KEY,
    DEFAULT_WORKSPACE_SECRET,
    DEFAULT_WORKSPACE_UID,
    EVENT_PATH,
    LEGACY_EVENT_PATH,
    RequestRecord,
    Sandbox,
)
from .validation import validate_record

__all__ = [
    "BULK_PATH",
    "DEFAULT_API_KEY",
    "DEFAULT_WORKSPACE_KEY",
    "DEFAULT_WORKSPACE_SECRET",
    "DEFAULT_WORKSPACE_UID",
    "EVENT_PATH",
    "LEGACY_EVENT_PATH",
    "FaultPlan",
    "FaultPlanError",
    "FaultRule",
    "RecordErrorSpec",
    "RequestRecord",
    "Sandbox",
    "check_request",
    "is_bearer",
    "main",
    "serve",
    "signature_for",
    "string_to_sign",
    "validate_record",
    "verify_signature",
]
