"""The Django app: ``INSTALLED_APPS += ["suprsend_celery.contrib.django"]``.

It brings the outbox table (``migrate`` creates it), a read-only admin page for it,
and a ``tasks`` module, so a project's ``app.autodiscover_tasks()`` registers
``track_event`` and ``flush_buffer`` without ``CELERY_IMPORTS``. As Django loads it,
the outbox's relay joins every ``flush_buffer`` run of this process.
"""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]

__all__ = ["SuprsendCeleryConfig"]


class SuprsendCeleryConfig(AppConfig):  # type: ignore[misc]
    """``suprsend_celery.contrib.django``, labelled ``suprsend_celery``."""

    name = "suprsend_celery.contrib.django"
    label = "suprsend_celery"
    verbose_name = "SuprSend events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Put the relay at the start of every flush run (once, however often called)."""
        from ...tasks.flush import before_run
        from .outbox import relay_before_flush

        if relay_before_flush not in before_run:
            before_run.append(relay_before_flush)
