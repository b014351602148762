"""Benchmarks and the reliability soak of suprsend-celery.

``python -m benchmarks`` measures producer latency, delivery throughput and sender CPU,
memory while draining a backlog and flusher scaling, side by side with the official
SDK and a naive Celery task, and writes ``BENCHMARKS.md``. ``python -m benchmarks.soak``
runs the chaos soak (worker SIGKILLs, API faults, Redis restarts) and checks that no
accepted event was lost or processed twice.
"""
