"""The outbox table: accepted events written in the caller's transaction.

A row is an event's record exactly as ``buffer_event`` would have pushed it (its
``$insert_id``, ``$time`` and ``$idempotency_key`` fixed when it was accepted), plus
what the admin may show: the key, the event's name and its ``distinct_id``, never its
properties. The relay pushes rows to the Redis buffer in ``id`` order and deletes them
once pushed. ``lease_until`` and ``lease_token`` serve databases without ``SELECT ...
FOR UPDATE SKIP LOCKED`` (SQLite): a relay takes rows by writing its token and a
deadline, and another takes them over only once the deadline has passed.
"""

from __future__ import annotations

from django.db import models  # type: ignore[import-untyped]
from django.utils import timezone  # type: ignore[import-untyped]

__all__ = ["OutboxEvent"]


class OutboxEvent(models.Model):  # type: ignore[misc]
    """One accepted event waiting to be moved to the Redis buffer."""

    id = models.BigAutoField(primary_key=True)
    #: When the event was accepted (its record's ``$time``, within a millisecond).
    created_at = models.DateTimeField(default=timezone.now)
    idempotency_key = models.CharField(max_length=255)
    event_name = models.TextField()
    distinct_id = models.TextField()
    #: The record's bytes, as the buffer holds them (no ``env``: added when sent; the
    #: caller's ``traceparent`` in front when it was accepted in a traced span).
    payload = models.BinaryField()
    #: Lease (databases without SKIP LOCKED): epoch seconds until which a relay owns it.
    lease_until = models.FloatField(null=True, blank=True)
    lease_token = models.CharField(max_length=32, null=True, blank=True)

    class Meta:
        db_table = "suprsend_celery_outbox"
        ordering = ("id",)
        verbose_name = "outbox event"
        verbose_name_plural = "outbox"

    def __str__(self) -> str:
        # Names the event, never its properties: this shows up in the admin and in logs.
        return f"{self.event_name} for {self.distinct_id} ({self.idempotency_key})"
