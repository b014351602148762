"""The one exception tree of suprsend-celery.

Catch ``SuprsendCeleryError`` for everything this package raises::

    SuprsendCeleryError
    ├── ConfigurationError         a missing or invalid setting; fix the config
    ├── InvalidEventError          bad input at the call site (also a ValueError)
    ├── BufferFullError            the Redis buffer reached suprsend_buffer_max_length
    ├── BufferUnavailableError     the buffer's Redis failed or did not answer in time
    ├── PublishError               track_event could not publish its task (broker down)
    ├── ReplicationError           fewer replicas than suprsend_buffer_min_replicas confirmed
    └── DeliveryError              SuprSend did not accept a request
        ├── TransientDeliveryError   worth retrying (timeouts, 429, 5xx, ...)
        └── PermanentDeliveryError   retrying cannot help (other 4xx)

The three accept errors (``BufferUnavailableError``, ``PublishError``,
``ReplicationError``) carry ``idempotency_keys`` and ``accepted``: ``False`` when the
events were certainly not stored, ``None`` when nobody can tell, ``True`` when they
were; calling again with the same keys is always safe.

Messages never carry event properties or secrets: they name the field, the status
code and the idempotency key, which is what an operator needs to find an event.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = [
    "Accepted",
    "BufferFullError",
    "BufferUnavailableError",
    "ConfigurationError",
    "DeliveryError",
    "InvalidEventError",
    "PermanentDeliveryError",
    "PublishError",
    "ReplicationError",
    "SuprsendCeleryError",
    "TransientDeliveryError",
    "accept_outcome",
]


class SuprsendCeleryError(Exception):
    """Base class of every error this package raises."""


class ConfigurationError(SuprsendCeleryError):
    """A setting is missing or invalid, or SuprSend refused our credentials."""


class InvalidEventError(SuprsendCeleryError, ValueError):
    """An event was refused at the call site; nothing was queued or buffered."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BufferFullError(SuprsendCeleryError):
    """The buffer holds ``suprsend_buffer_max_length`` records; the event was not accepted."""


#: What an accept error knows of its events: ``True`` stored (they will be sent),
#: ``False`` certainly not stored, ``None`` unknown (see ``_AcceptError.accepted``).
Accepted = bool | None


def accept_outcome(accepted: Accepted) -> str:
    """The sentence an accept error's message ends with: whether the events were
    accepted, and that calling again with the same keys is safe."""
    if accepted is False:
        return (
            "the event(s) were not accepted: nothing was stored (accepted=False); call "
            "again with the same idempotency keys (.idempotency_keys), which is always safe"
        )
    if accepted is None:
        return (
            "whether the event(s) were accepted is unknown: the request went out but no "
            "answer came in time, so they may still be stored (accepted=None); call again "
            "with the same idempotency keys (.idempotency_keys), never new ones: that is "
            "always safe, SuprSend skips a repeated key"
        )
    return (
        "the event(s) were accepted: they are stored and will be sent (accepted=True); "
        "calling again with the same idempotency keys (.idempotency_keys) is safe"
    )


_E = TypeVar("_E", bound="_AcceptError")


class _AcceptError(SuprsendCeleryError):
    """Accepting an event failed on the way to Redis or the broker (the cause is chained).

    ``idempotency_keys`` are the keys of the events concerned. ``accepted`` says what
    became of them: ``False`` only when they were certainly not stored (the connection
    was refused, or the request was never written: a failed connect, a policy check
    that refused before sending); ``None`` when nobody can tell (a timeout or a lost
    connection after the request was written: Redis may run it when it resumes);
    ``True`` when they are stored and will be sent. Calling again with the same keys
    is safe in every case, since SuprSend skips a repeated key; calling again with new
    keys after ``None`` may send an event twice.
    """

    #: See the class docstring; ``None`` (unknown) unless the raiser knows better.
    accepted: Accepted = None

    def __init__(
        self,
        message: str,
        *,
        idempotency_keys: tuple[str, ...] = (),
        accepted: Accepted = None,
    ) -> None:
        super().__init__(message)
        self.idempotency_keys = idempotency_keys
        self.accepted = accepted

    @classmethod
    def because(cls: type[_E], reason: str, *, accepted: Accepted, **fields: Any) -> _E:
        """An error whose message is ``reason`` followed by what ``accepted`` means."""
        return cls(f"{reason}; {accept_outcome(accepted)}", accepted=accepted, **fields)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_accept_error,
            (type(self), str(self), self.idempotency_keys, self.accepted),
        )


class BufferUnavailableError(_AcceptError):
    """The buffer's Redis refused or did not answer within ``suprsend_accept_timeout``;
    ``accepted`` says whether the events may be stored all the same."""


class ReplicationError(_AcceptError):
    """The master took the events but too few replicas confirmed them in time (``WAIT``).

    The events are buffered (``accepted`` is True) and will be delivered; only a
    failover before the master replicates them loses them. Calling again with the same
    idempotency keys (``idempotency_keys``) is safe either way: SuprSend skips a
    repeated key. ``replicas`` confirmed of the ``required``
    (``suprsend_buffer_min_replicas``).
    """

    accepted: Accepted = True

    def __init__(
        self,
        message: str,
        *,
        replicas: int = 0,
        required: int = 0,
        idempotency_keys: tuple[str, ...] = (),
        accepted: Accepted = True,
    ) -> None:
        super().__init__(message, idempotency_keys=idempotency_keys, accepted=accepted)
        self.replicas = replicas
        self.required = required


class PublishError(_AcceptError):
    """``track_event`` could not note its task in the journal, or publish it;
    ``accepted`` says whether the event will be sent all the same."""

    @classmethod
    def for_event(
        cls, key: str, what: str, cause: BaseException, *, accepted: Accepted
    ) -> PublishError:
        return cls.because(
            f"event {key} {what} ({type(cause).__name__}: {cause})",
            accepted=accepted,
            idempotency_keys=(key,),
        )


def _rebuild_accept_error(
    cls: type[_AcceptError], message: str, keys: tuple[str, ...], accepted: Accepted = None
) -> _AcceptError:
    return cls(message, idempotency_keys=keys, accepted=accepted)


class DeliveryError(SuprsendCeleryError):
    """A request to SuprSend failed.

    ``status_code`` is None when no HTTP response arrived (connection error, timeout).
    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    #: Whether sending the same request again may succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        idempotency_key: str | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        config_fault: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.idempotency_key = idempotency_key
        self.retry_after = retry_after
        self.error_type = error_type
        #: The request as a whole was refused for a reason no event can cause (a wrong
        #: URL: 404, 405, a redirect); see ``is_config_error``.
        self.config_fault = config_fault

    @property
    def is_auth_error(self) -> bool:
        """401/403: the workspace key or secret is wrong; events must not be dead-lettered."""
        return self.status_code in (401, 403)

    @property
    def is_config_error(self) -> bool:
        """A fault of the configuration, not of the events: keep them, fix the settings.

        Refused credentials, and a whole request refused in a way that cannot be about
        one record's content (``config_fault``: 404, 405 or a redirect, i.e. a wrong
        ``suprsend_base_url``).
        """
        return self.is_auth_error or self.config_fault

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields survive pickling (Celery result backends, billiard pools).
        return (
            _rebuild_delivery_error,
            (
                type(self),
                self.message,
                self.status_code,
                self.idempotency_key,
                self.retry_after,
                self.error_type,
                self.config_fault,
            ),
        )


class TransientDeliveryError(DeliveryError):
    """Connection errors, timeouts, 408/409/425/429 and 500/502/503/504: retry later."""

    retryable = True


class PermanentDeliveryError(DeliveryError):
    """Any other 4xx: the request itself is wrong and will fail again."""


def _rebuild_delivery_error(
    cls: type[DeliveryError],
    message: str,
    status_code: int | None,
    idempotency_key: str | None,
    retry_after: float | None,
    error_type: str | None,
    config_fault: bool = False,
) -> DeliveryError:
    return cls(
        message,
        status_code=status_code,
        idempotency_key=idempotency_key,
        retry_after=retry_after,
        error_type=error_type,
        config_fault=config_fault,
    )
