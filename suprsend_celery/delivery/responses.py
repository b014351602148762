"""Reading SuprSend's answers: status classes, ``Retry-After``, error text, bulk results.

Pure functions of a status, headers and body, so any response (an HTML 502, a
truncated body, a malformed record list) becomes a result or a typed
``DeliveryError``. See docs/protocol.md for the response shapes.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .. import defaults
from ..events.records import key_of
from ..exceptions import DeliveryError, PermanentDeliveryError, TransientDeliveryError

__all__ = [
    "RETRYABLE_STATUS",
    "BulkResponse",
    "BulkResult",
    "RecordResult",
    "bulk_answer",
    "bulk_response",
    "classify_status",
    "decode_body",
    "error_for_response",
    "is_wrong_url",
    "parse_retry_after",
]

#: Status codes worth retrying (docs/protocol.md). Other 5xx are treated as transient too, except
#: 501 and 505, which say the request itself can never work.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_PERMANENT_5XX = frozenset({501, 505})
_ERROR_TEXT_LIMIT = 200


def parse_retry_after(value: str | None, *, cap: float = defaults.RETRY_AFTER_CAP) -> float | None:
    """Seconds from a ``Retry-After`` (delta-seconds or HTTP-date), capped; None if absent."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": RFC 5322's "UTC, source zone unknown"
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, min(seconds, cap))


def classify_status(status_code: int) -> type[DeliveryError]:
    """The error class for a non-2xx status: transient ones are worth retrying."""
    if status_code in RETRYABLE_STATUS or (
        500 <= status_code <= 599 and status_code not in _PERMANENT_5XX
    ):
        return TransientDeliveryError
    return PermanentDeliveryError


def _error_text(body: object, status_code: int) -> tuple[str, str | None]:
    """Pull ``error.message``/``error.type`` out of whatever the server sent."""
    message: object = None
    etype: object = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message, etype = error.get("message"), error.get("type")
        elif isinstance(error, str):
            message = error
        if message is None and isinstance(body.get("message"), str):
            message = body["message"]
    elif isinstance(body, str) and body.strip():
        message = body
    text = str(message) if message else f"HTTP {status_code}"
    if len(text) > _ERROR_TEXT_LIMIT:
        text = text[: _ERROR_TEXT_LIMIT - 3] + "..."
    return text, (str(etype) if etype else None)


def decode_body(content: bytes) -> object:
    """The body as JSON, or the text itself when it is not JSON (an HTML error page)."""
    try:
        return json.loads(content)
    except RecursionError:  # absurdly nested JSON
        return None
    except ValueError:
        text = content.decode("utf-8", "replace").strip()
        if text.startswith("<"):
            return None  # an HTML page says nothing useful
        return text


def error_for_response(
    status_code: int,
    body: object,
    headers: Any,
    idempotency_key: str | None = None,
    *,
    settings_hint: str = "suprsend_workspace_key and suprsend_workspace_secret",
    url: str = "",
) -> DeliveryError:
    """Build the ``DeliveryError`` for a non-2xx answer to a whole request to ``url``.

    401/403 name ``settings_hint``; 404, 405 and redirects (``is_wrong_url``) name the
    URL and ``suprsend_base_url``: both are configuration faults, never about an event.
    """
    message, etype = _error_text(body, status_code)
    cls = classify_status(status_code)
    retry_after = parse_retry_after(headers.get("Retry-After")) if headers is not None else None
    wrong_url = is_wrong_url(status_code)
    if status_code in (401, 403):
        message = (
            f"SuprSend refused the workspace credentials (HTTP {status_code}: {message}); "
            f"check {settings_hint}"
        )
    elif wrong_url:
        location = headers.get("Location") if headers is not None else None
        moved = f", redirected to {location}" if location and 300 <= status_code < 400 else ""
        message = (
            f"HTTP {status_code} from {url or 'the event API'}{moved}: this URL does not "
            f"take events, so no event was judged; check suprsend_base_url ({message})"
        )
    else:
        message = f"HTTP {status_code}: {message}"
    return cls(
        message,
        status_code=status_code,
        idempotency_key=idempotency_key,
        retry_after=retry_after,
        error_type=etype,
        config_fault=wrong_url,
    )


def is_wrong_url(status_code: int) -> bool:
    """404, 405 or a redirect to a whole request: sent to the wrong place, not a bad event."""
    return status_code in (404, 405) or 300 <= status_code < 400


@dataclass(frozen=True, slots=True)
class RecordResult:
    """The outcome of one record of a bulk send."""

    index: int
    idempotency_key: str | None
    status_code: int | None
    error: DeliveryError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class BulkResult(Sequence[RecordResult]):
    """Per-record outcomes of ``send_bulk``, in the order the records were given."""

    def __init__(self, results: list[RecordResult], requests_sent: int) -> None:
        self._results = results
        self.requests = requests_sent

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, index: Any) -> Any:
        return self._results[index]

    def __iter__(self) -> Iterator[RecordResult]:
        return iter(self._results)

    @property
    def succeeded(self) -> int:
        return sum(1 for r in self._results if r.ok)

    @property
    def failed(self) -> list[RecordResult]:
        return [r for r in self._results if not r.ok]

    def __repr__(self) -> str:
        return (
            f"BulkResult(records={len(self._results)}, succeeded={self.succeeded}, "
            f"failed={len(self._results) - self.succeeded}, requests={self.requests})"
        )


@dataclass(slots=True)
class BulkResponse:
    """One bulk request's outcome, kept compact for the flusher's hot path.

    ``request_error`` is set when the request as a whole failed (no usable response):
    every record then shares it. Otherwise ``failures`` lists ``(index, error)`` for the
    records the server did not accept; records not listed succeeded.
    """

    size: int
    request_error: DeliveryError | None = None
    failures: list[tuple[int, DeliveryError]] | None = None
    #: The HTTP status of an answered request (a failed one's is ``request_error``'s).
    status_code: int | None = None


def _record_error(record: object, payload: bytes) -> DeliveryError:
    """The error for one record a bulk response did not accept."""
    key = key_of(payload)
    if not isinstance(record, dict):
        return TransientDeliveryError(
            "malformed record result in the bulk response", idempotency_key=key
        )
    raw_code = record.get("status_code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else 500
    message, etype = _error_text(record, code)
    cls = classify_status(code) if code >= 400 else TransientDeliveryError
    return cls(f"HTTP {code}: {message}", status_code=code, idempotency_key=key, error_type=etype)


#: A bulk answer in which every record succeeded, as SuprSend (and the sandbox) write
#: it: ``{"records": [{"status": "success", ...}, ...]}`` with flat records (no nested
#: object or list, no escaped character). Possessive loops: one pass, no backtracking.
_RECORD_OK = rb'\{"status": ?"success"[^{}\[\]\\]*+\}'
_ALL_OK = re.compile(rb'\{"records": ?\[(?:' + _RECORD_OK + rb"(?:, ?" + _RECORD_OK + rb")*+)?\]\}")


def bulk_answer(status: int, body: bytes, payloads: Sequence[bytes]) -> BulkResponse:
    """The per-record outcome of a 2xx bulk answer's ``body``.

    The usual answer (every record a success, flat, one ``"status"`` per record) is
    recognised without parsing JSON, in a third of ``json.loads``' time; anything else
    is parsed (``bulk_response``), so an odd answer is read exactly as before.
    """
    size = len(payloads)
    if _all_ok(body, size) or (
        _ALL_OK.fullmatch(body) is not None and body.count(b'"status"') == size
    ):
        return BulkResponse(size, failures=[], status_code=status)
    return bulk_response(status, decode_body(body), payloads)


_OK_OPEN = b'{"status": "success"'


def _all_ok(body: bytes, size: int) -> bool:
    """``_ALL_OK``'s verdict for its usual spelling (``": "`` and ``}, {``), by counting
    bytes (a few passes at C speed, about a sixth of the regex's time on 100 records).

    The array holds ``size`` ``{`` and ``size`` ``}``, with ``}, {`` between each two
    records, so it reads ``[{R1}, {R2}, ... {Rn}]`` with no brace, bracket or backslash
    inside any ``R``; every ``{`` there opens ``"status": "success"`` and no record has a
    second ``"status"``. Anything else is left to the regex.
    """
    return (
        size > 0
        and body.startswith(b'{"records": [' + _OK_OPEN)
        and body.endswith(b"}]}")
        and body.count(b"{") == size + 1
        and body.count(b"}") == size + 1
        and body.count(b"[") == 1
        and body.count(b"]") == 1
        and b"\\" not in body
        and body.count(b"}, {") == size - 1
        and body.count(_OK_OPEN) == size
        and body.count(b'"status"') == size
    )


def bulk_response(status: int, parsed: object, payloads: Sequence[bytes]) -> BulkResponse:
    """The per-record outcome of a 2xx bulk answer; a record without a verdict is transient."""
    size = len(payloads)
    records = parsed.get("records") if isinstance(parsed, dict) else None
    if not isinstance(records, list):
        records = []
    failures: list[tuple[int, DeliveryError]] = []
    for index, record in enumerate(records[:size]):
        if isinstance(record, dict) and record.get("status") == "success":
            continue
        failures.append((index, _record_error(record, payloads[index])))
    for index in range(len(records), size):
        # No verdict for this record: sending it again is safe (idempotency key).
        error = TransientDeliveryError(
            f"HTTP {status}: no result for this record in the bulk response",
            status_code=status,
            idempotency_key=key_of(payloads[index]),
        )
        failures.append((index, error))
    return BulkResponse(size, failures=failures, status_code=status)
