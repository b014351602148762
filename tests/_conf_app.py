"""The standalone relay with ``suprsend_redis_url`` in its Celery config, as Django
settings (``CELERY_SUPRSEND_REDIS_URL``) would put it: for the Flower redaction test."""

import os

from suprsend_celery.app import app

app.conf.suprsend_redis_url = os.environ["SUPRSEND_REDIS_URL"]

__all__ = ["app"]
