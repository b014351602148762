"""The producers and the flusher, with the settings and per-app runtime they run on.

Producers validate and accept events in the caller and push them into the buffer;
the flusher claims, sends through the delivery layer and settles. ``settings`` reads
the ``suprsend_*`` configuration once per app, ``runtime`` builds the client, buffer
and flusher from it. Celery appears here only as the app that carries the settings.
"""
