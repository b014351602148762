"""The Redis buffer: key names, the Lua scripts, and the structures built on them.

Queue and claims, the direct path's journal, dead letters, the circuit breaker and
the stats all live in Redis under one hash tag per shard; every multi-step change is
one Lua script (``lua/``, loaded and called by ``scripts``). No HTTP and no Celery
here; connections (``connection``, ``accept_connections``) and the eviction-policy
guard (``eviction``) are part of this room.
"""
