"""Named defaults and protocol limits, each defined once."""

from __future__ import annotations

TRACK_TASK = "suprsend_celery.track_event"
"""The direct path's Celery task name (route it with ``task_routes``)."""

FLUSH_TASK = "suprsend_celery.flush_buffer"
"""The flush task's Celery task name."""

BASE_URL = "https://hub.suprsend.com/"
"""SuprSend's public hub; override with ``suprsend_base_url`` (the sandbox in tests)."""

KEY_PREFIX = "suprsend_celery"
"""Prefix of every Redis key the buffer writes, so several apps can share one Redis."""

DEDUP_WINDOW = 24 * 3600.0
"""Seconds SuprSend remembers an idempotency key; a record sent later may be processed
again if an earlier send of it was."""

BUFFER_MAX_LENGTH = 1_000_000
"""Records the buffer holds (dead letters included) before ``buffer_event`` raises
``BufferFullError``."""

OUTBOX_MAX_ROWS = 1_000_000
"""Rows the Django outbox holds before ``outbox_event`` raises ``OutboxFullError``."""

OUTBOX_DATABASES = ("default",)
"""Django database aliases whose outbox the relay moves into the buffer."""

OUTBOX_RELAY_BATCH = 500
"""Outbox rows one relay step locks, pushes to the buffer in one round trip, and deletes."""

OUTBOX_LEASE = 60.0
"""Seconds a relay owns the rows it took where the database has no ``SKIP LOCKED``
(SQLite); a relay killed mid-move leaves them to the next one after this."""

FLUSH_INTERVAL = 5.0
"""Seconds between beat-scheduled ``flush_buffer`` runs; 0 disables the beat entry."""

FLUSH_BATCH_SIZE = 100
"""Records claimed and sent per bulk request; SuprSend accepts at most 100."""

MAX_RETRIES = 10
"""Retries of one event (direct) or one record (buffered) before it is dead-lettered."""

RETRY_BACKOFF_MAX = 600.0
"""Upper bound, in seconds, of one retry delay."""

RETRY_BACKOFF_BASE = 1.0
"""First retry delay in seconds; each further attempt doubles it (with full jitter)."""

REQUEST_TIMEOUT = 10.0
"""Read timeout of one HTTP request, in seconds."""

ACCEPT_TIMEOUT = 2.0
"""Seconds ``buffer_event`` / ``track_event.delay`` may spend on Redis and the broker
before they fail with ``BufferUnavailableError`` / ``PublishError``: a view must not hang."""

ACCEPT_TIMEOUT_MAX = 30.0
"""Upper bound of ``suprsend_accept_timeout``."""

CONNECT_TIMEOUT = 3.05
"""Connect timeout: short, since an unreachable API should fail fast and retry."""

MAX_EVENT_BYTES = 102_400
"""SuprSend's limit for one serialised event (100 KiB)."""

MAX_BULK_RECORDS = 100
"""SuprSend's limit of records per bulk request."""

MAX_BULK_BYTES = 800 * 1024
"""SuprSend's limit of one bulk request body (800 KiB)."""

RETRY_AFTER_CAP = 600.0
"""A server's ``Retry-After`` is honoured as a floor, but never above this many seconds."""

VISIBILITY_TIMEOUT = 3600.0
"""Kombu's default Redis visibility timeout; countdowns must stay below it (celery#5935)."""

CLAIM_LEASE = 60.0
"""Seconds a flusher owns a claimed batch; after that the batch returns to the buffer."""

FLUSH_TIME_BUDGET = 25.0
"""Seconds one ``flush_buffer`` run keeps draining before it yields to the next run."""

FLUSH_WAIT = True
"""A beat-started flush run stays on duty for about one interval, waiting on Redis for
new records and sending them within milliseconds; False: it ends when the buffer is
empty (records wait for the next beat, up to one interval)."""

FLUSH_LINGER = 0.02
"""Seconds a run on duty lets a batch fill while records keep arriving (Kafka's
``linger.ms``); a full batch goes at once, and a record after a quiet spell too. At
7,000 events/s (one producer thread) 20 ms fill a batch of 100."""

FLUSH_LINGER_MAX = 1.0
"""Upper bound of ``suprsend_flush_linger``."""

DUTY_RUNS_MAX = 2
"""Flush runs waiting on duty at once, whatever beat does: one, and its successor while
it takes over. A run that finds no place drains the buffer and ends."""

DUTY_HANDOVER = 1.0
"""Seconds a run stays on duty past one flush interval, so the next run is on duty
before it leaves (it leaves as soon as it sees the next run there)."""

DUTY_LEASE = 10.0
"""Seconds a place on duty is held without renewal: a killed run's place frees itself."""

WAIT_SLICE = 1.0
"""Longest single block of a run on duty: it renews its place, notices a warm shutdown
or the next run taking over, and claims (due retries, expired leases) at least this
often."""

PROBE_LEASE = 30.0
"""Seconds the breaker's probe claim holds the breaker half-open before another may probe."""

PROBE_RECORDS = 10
"""Records in the breaker's probe claim: enough to test the API, few enough to risk."""

CLAIM_EXPIRED_LIMIT = 50
"""Expired claims one claim returns to pending (the rest wait for the next claim)."""

CLAIM_DUE_RETRIES_LIMIT = 1000
"""Due retries one claim moves to pending, so one script stays short under a backlog."""

JOURNAL_RECOVER_LIMIT = 1000
"""Due journal records one flush run moves to pending."""

JOURNAL_GRACE = 60.0
"""Seconds a direct-path event's journal entry waits past its task's next attempt time
(publish plus countdown; an attempt's start plus its longest request) before the
flusher sends it instead: a worker killed holding the task (OOM, node lost) then delays
the event by about this much, not by the broker's visibility timeout (an hour). Longer
spares duplicate requests while a queue lags; ``suprsend_journal_grace``."""

JOURNAL_GRACE_MAX = 86_400.0
"""Upper bound of ``suprsend_journal_grace``."""

JOURNAL_TAKEN_KEEP = DEDUP_WINDOW
"""Seconds the journal remembers (by SHA1) a record the flusher took over, so a task
the broker redelivers later skips it rather than send and count it again: as long as
SuprSend would skip a repeat anyway, after which a second send would be processed."""

SETTLED_TOMBSTONE_SECONDS = 60
"""How long a settled claim is remembered, so a re-sent SETTLE is answered, not refused."""

FLUSH_CONCURRENCY = 8
"""Bulk requests in flight when a flusher starts (the adaptive limit's start value), or
always with ``suprsend_flush_concurrency_adaptive`` off: at 100 ms per request, 8 send
about 8000 events/s."""

FLUSH_CONCURRENCY_MAX = 64
"""Upper bound of ``suprsend_flush_concurrency`` and default of
``suprsend_flush_concurrency_max``: the adaptive limit's ceiling (threads, connections
and claims in flight per flusher). 64 requests of 100 records at 250 ms is about
25,000 events/s, more than a workspace is usually allowed."""

FLUSH_CONCURRENCY_CEILING = 256
"""Upper bound of ``suprsend_flush_concurrency_max``."""

FLUSH_CONCURRENCY_FLOOR = 1
"""The adaptive limit never goes below this many requests in flight (for the buffer,
shared by every flusher; each flusher keeps at least one)."""

FLUSH_CONCURRENCY_ADAPTIVE = True
"""Whether flushers adapt their requests in flight to the API's latency and refusals
(``suprsend_flush_concurrency_adaptive``)."""

CONCURRENCY_SYNC_SECONDS = 0.05
"""How often a flusher merges what it learned into the buffer's shared limit (and
reads what the others learned): one small script, twenty times a second at most, so
flushers hear of another's refusal within a round trip of a fast API."""

CONCURRENCY_ACTIVE_SECONDS = 2.0
"""A flusher that has not merged for this long no longer counts as sharing the limit
(it crashed, or its run ended without saying so)."""

CONCURRENCY_KEEP_SECONDS = 3600
"""The shared limit is forgotten after an hour without flushers: the next one starts
from ``suprsend_flush_concurrency`` again."""

BUFFER_SHARDS = 1
"""Hash-tagged shards of the buffer (``{prefix}``, ``{prefix:1}``, ...): more spread a
Redis Cluster's load over its masters; 1 keeps every key in one slot."""

BUFFER_SHARDS_MAX = 1024
"""Upper bound of ``suprsend_buffer_shards``."""

BUFFER_MIN_REPLICAS = 0
"""Replicas that must confirm a push (``WAIT``) before ``buffer_event`` returns."""

BUFFER_MIN_REPLICAS_MAX = 16
"""Upper bound of ``suprsend_buffer_min_replicas``."""

MIN_REPLICAS_WAIT_SHARE = 0.25
"""Share of ``suprsend_accept_timeout`` a push waits for its replicas (``WAIT``) before
``ReplicationError``: 0.5 s by default, well inside the call's own bound."""

SHARD_REGISTRY_REFRESH = 10.0
"""Seconds between re-reads of the shards ever used, so flushers find new ones."""

FAILOVER_RETRIES = 20
"""Retries of a command through Sentinel (exponential backoff capped at 1 s): about
15 s, enough to ride out a failover without a restart."""

BREAKER_THRESHOLD = 5
"""Consecutive whole-request failures that open the shared circuit breaker."""

BREAKER_COOLDOWN = 10.0
"""Seconds the breaker stays open before one probe request may test the API."""

BREAKER_COOLDOWN_MAX = 120.0
"""Upper bound of the breaker's cool-down, which doubles after each failed probe."""

POLICY_RECHECK_SECONDS = 60.0
"""How often a process re-reads its Redis's ``maxmemory-policy`` while accepting events."""

IDEMPOTENCY_KEY_MAX = 255
"""SuprSend's limit of an idempotency key's length."""

TENANT_ID_MAX = 64
"""SuprSend's limit of ``tenant_id`` and ``brand_id``."""

ASYNC_REDIS_CONNECTIONS = 64
"""Redis connections the async producers open per event loop; more concurrent calls wait
for one (up to the socket timeout) instead of failing with "Too many connections"."""
