"""A local SuprSend event API for development and tests (see ``suprsend_celery.dev.sandbox``).

``with Sandbox() as sb: ... sb.url``; ``python -m suprsend_celery.sandbox`` serves in
the foreground; the ``suprsend_sandbox`` pytest fixture hands a clean one to each test.
"""

from ..dev.sandbox import (
    BULK_PATH,
    DEFAULT_API_KEY,
    DEFAULT_WORKSPACE_KEY,
    DEFAULT_WORKSPACE_SECRET,
    DEFAULT_WORKSPACE_UID,
    EVENT_PATH,
    LEGACY_EVENT_PATH,
    FaultPlan,
    FaultPlanError,
    FaultRule,
    RecordErrorSpec,
    RequestRecord,
    Sandbox,
    check_request,
    is_bearer,
    main,
    serve,
    signature_for,
    string_to_sign,
    validate_record,
    verify_signature,
)

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
