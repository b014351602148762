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

Messages never carry event properties or secrets: they name the field, the status
code and the idempotency key, which is what an operator needs to find an event.
"""

from __future__ import annotations

__all__ = [
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


class _AcceptError(SuprsendCeleryError):
    """Accepting an event failed on the way to Redis or the broker (the cause is chained).

    ``idempotency_keys`` are the keys of the events concerned. A timeout cannot tell
    whether the other side applied the write; calling again with the same keys is then
    safe, since SuprSend skips a repeated key.
    """

    def __init__(self, message: str, *, idempotency_keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.idempotency_keys = idempotency_keys

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_accept_error, (type(self), str(self), self.idempotency_keys))


class BufferUnavailableError(_AcceptError):
    """The buffer's Redis refused or did not answer within ``suprsend_accept_timeout``."""


class ReplicationError(_AcceptError):
    """The master took the events but too few replicas confirmed them in time (``WAIT``).

    The events are most likely buffered and will be delivered; only a failover before
    the master replicates them loses them. Calling again with the same idempotency
    keys (``idempotency_keys``) is safe either way: SuprSend skips a repeated key.
    ``replicas`` confirmed of the ``required`` (``suprsend_buffer_min_replicas``).
    """

    def __init__(
        self,
        message: str,
        *,
        replicas: int = 0,
        required: int = 0,
        idempotency_keys: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, idempotency_keys=idempotency_keys)
        self.replicas = replicas
        self.required = required


class PublishError(_AcceptError):
    """``track_event`` could not publish its task, nor note it in the journal, within
    ``suprsend_accept_timeout``; nothing was published."""

    @classmethod
    def for_event(cls, key: str, what: str, cause: BaseException) -> PublishError:
        return cls(
            f"event {key} {what} ({type(cause).__name__}: {cause}); it was not accepted",
            idempotency_keys=(key,),
        )


def _rebuild_accept_error(
    cls: type[_AcceptError], message: str, keys: tuple[str, ...]
) -> _AcceptError:
    return cls(message, idempotency_keys=keys)


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
