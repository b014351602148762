"""Operations: the ``suprsend-celery`` command line, the Prometheus exporter, health checks.

They read the buffer through the layers below and never change how events travel.
"""
