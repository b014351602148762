"""Delivery: talking to SuprSend and deciding what an outcome means, for both paths.

``client`` signs and sends (``credentials``, ``routing``), ``responses`` reads any
answer into results and typed errors; ``retry``, ``decisions`` and ``dead_letters``
turn outcomes into retries, acknowledgements and dead letters as pure functions;
``tally`` gathers the counts a settle writes to Redis. No Celery, no Redis here.
"""
