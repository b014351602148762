"""The outbox table (``suprsend_celery_outbox``)."""

from __future__ import annotations

from typing import Any

import django.utils.timezone  # type: ignore[import-untyped]
from django.db import migrations, models  # type: ignore[import-untyped]


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True

    dependencies: list[Any] = []

    operations = [
        migrations.CreateModel(
            name="OutboxEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("idempotency_key", models.CharField(max_length=255)),
                ("event_name", models.TextField()),
                ("distinct_id", models.TextField()),
                ("payload", models.BinaryField()),
                ("lease_until", models.FloatField(blank=True, null=True)),
                ("lease_token", models.CharField(blank=True, max_length=32, null=True)),
            ],
            options={
                "verbose_name": "outbox event",
                "verbose_name_plural": "outbox",
                "db_table": "suprsend_celery_outbox",
                "ordering": ("id",),
            },
        ),
    ]
