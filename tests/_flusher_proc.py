"""A flusher process for crash tests: runs ``Flusher.run`` in a loop until it is killed.

    python tests/_flusher_proc.py REDIS_URL BASE_URL LEASE_SECONDS BATCH_SIZE [PREFIX]

Credentials come from SUPRSEND_WORKSPACE_KEY / SUPRSEND_WORKSPACE_SECRET, the shard
count from SUPRSEND_BUFFER_SHARDS (REDIS_URL may be a cluster node's). The loop
ends by itself when the parent test process is gone, so it can never be orphaned.
"""

from __future__ import annotations

import os
import sys
import time

from suprsend_celery.buffer.opening import BufferConfig, open_buffer
from suprsend_celery.delivery.client import SuprsendClient
from suprsend_celery.pipeline.flusher import Flusher


def main() -> None:
    redis_url, base_url, lease, batch_size = sys.argv[1:5]
    prefix = sys.argv[5] if len(sys.argv) > 5 else "suprsend_celery"
    parent = os.getppid()
    shards = int(os.environ.get("SUPRSEND_BUFFER_SHARDS") or 1)
    buffer = open_buffer(BufferConfig(redis_url, prefix=prefix, shards=shards))
    client = SuprsendClient(
        os.environ["SUPRSEND_WORKSPACE_KEY"],
        os.environ["SUPRSEND_WORKSPACE_SECRET"],
        base_url=base_url,
        timeout=10,
    )
    flusher = Flusher(buffer, client, lease=float(lease), batch_size=int(batch_size))
    print("flusher ready", flush=True)
    while os.getppid() == parent:
        report = flusher.run(time_budget=2.0)
        if not (report.sent or report.retry_scheduled or report.dead_lettered):
            time.sleep(0.05)  # idle: the buffer is empty or waiting on a lease


if __name__ == "__main__":
    main()
