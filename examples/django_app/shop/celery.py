"""The project's Celery app, configured from Django settings (``CELERY_*``).

``CELERY_SUPRSEND_*`` settings become the ``suprsend_*`` keys suprsend-celery reads,
so the whole configuration lives in ``settings.py``::

    celery -A shop worker --beat      # sends events and runs flush_buffer every few seconds
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
