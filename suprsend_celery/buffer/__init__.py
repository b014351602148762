"""The Redis buffer: key names, the Lua scripts, and the parts built on them.

``keys`` names every key once (one ``Keys`` per shard's hash tag); every multi-step
change is one Lua script (``lua/``, loaded and called by ``scripts``). The parts, each
with one job over a shard's ``Keys`` and ``slot.Slot``: the queue and its claims
(``queue``), the direct path's journal (``journal``), dead letters
(``dead_letter_list``), the circuit breaker (``breaker``) and the figures
(``snapshot``). ``redis_buffer`` composes them for one shard, ``sharded`` holds
several shards as one buffer, both behind the ``protocol.Buffer`` the layers above
use, and ``opening.open_buffer`` is the one way to build one; ``close()`` releases
what it opened. A push's decisions (``push_plan``) are made once for the sync push
(``queue``) and the ``redis.asyncio`` one (``async_push``). No HTTP and no Celery
here; connections (``connection``, ``accept_connections``), Redis's clock (``clock``)
and the eviction-policy guard (``eviction``) are part of this room.
"""
