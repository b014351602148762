"""Deprecated import path: the exporter is ``suprsend_celery.ops.exporter``."""

import warnings

from .ops.exporter import BufferCollector, make_registry, serve, wsgi_app

__all__ = ["BufferCollector", "make_registry", "serve", "wsgi_app"]

warnings.warn(
    "suprsend_celery.metrics is deprecated: use suprsend_celery.ops.exporter",
    DeprecationWarning,
    stacklevel=2,
)
