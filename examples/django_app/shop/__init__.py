"""The example shop: Django + Celery + suprsend-celery.

Importing the Celery app here makes ``@shared_task`` use it and lets
``celery -A shop worker`` find it.
"""

from .celery import app as celery_app

__all__ = ("celery_app",)
