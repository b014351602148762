"""The standalone relay with ``result_extended`` on, for the killed-task result test."""

from suprsend_celery.app import app

app.conf.result_extended = True

__all__ = ["app"]
