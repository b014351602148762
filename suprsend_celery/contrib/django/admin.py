"""A read-only admin page for the outbox: what waits, since when, and under which key.

Nobody adds, edits or deletes rows here (the relay owns them), and an event's
properties are never shown: the record's bytes stay out of every page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin  # type: ignore[import-untyped]

from .models import OutboxEvent

__all__ = ["OutboxEventAdmin"]


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):  # type: ignore[misc]
    """List and view outbox rows; no changes."""

    list_display = ("id", "created_at", "event_name", "distinct_id", "idempotency_key", "leased")
    search_fields = ("=idempotency_key", "=distinct_id", "event_name")
    fields = ("id", "created_at", "event_name", "distinct_id", "idempotency_key", "lease_until")
    readonly_fields = fields
    list_per_page = 100
    show_full_result_count = False  # a COUNT(*) per page is costly on a deep outbox

    @admin.display(boolean=True, description="taken by a relay")  # type: ignore[untyped-decorator]
    def leased(self, row: OutboxEvent) -> bool:
        return row.lease_until is not None

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
