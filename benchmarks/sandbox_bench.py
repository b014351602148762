"""How many bulk-delivered events per second the sandbox absorbs.

The sandbox runs in its own process (``python -m suprsend_celery.sandbox``) so it does
not share a GIL with the senders; each sender process holds one keep-alive connection
and posts signed bulk requests of 100 realistic records with unique idempotency keys.
Bodies are built before the clock starts, signing happens per request (as a real
client would). Usage::

    python benchmarks/sandbox_bench.py                 # 2 senders x 200 requests
    python benchmarks/sandbox_bench.py --senders 4 --requests 300
    python benchmarks/sandbox_bench.py --client suprsend   # through SuprsendClient
    python benchmarks/sandbox_bench.py --in-process        # sandbox in a thread here
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import multiprocessing as mp
import subprocess
import sys
import time
import uuid
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

KEY = "WSKEY_bench_0123456789abcdef"
SECRET = "WSSECRET_bench"
CONTENT_TYPE = "application/json; charset=utf-8"
BATCH = 100


def make_record(sender: int, n: int) -> dict[str, Any]:
    return {
        "$insert_id": str(uuid.uuid4()),
        "$time": int(time.time() * 1000),
        "event": "order_placed",
        "env": KEY,
        "distinct_id": f"user-{n % 5000}",
        "properties": {
            "order_id": f"ord-{sender}-{n}",
            "amount": 129.95,
            "currency": "EUR",
            "items": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-7", "qty": 1}],
            "$ss_sdk_version": "suprsend-celery/bench",
        },
        "$idempotency_key": f"bench-{sender}-{n}",
    }


def raw_sender(url: str, sender: int, requests: int, start: Any, ready: Any, done: Any) -> None:
    """Post pre-built bulk bodies over one keep-alive connection."""
    parts = urlsplit(url)
    bodies = [
        json.dumps(
            [make_record(sender, r * BATCH + i) for i in range(BATCH)], ensure_ascii=False
        ).encode()
        for r in range(requests)
    ]
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    path = "/v2/bulk/event/"
    ready.put(sender)
    start.wait()
    failures = 0
    for body in bodies:
        date = formatdate(usegmt=True)
        text = f"POST\n{hashlib.md5(body).hexdigest()}\n{CONTENT_TYPE}\n{date}\n{path}"
        mac = hmac.new(SECRET.encode(), text.encode(), hashlib.sha256).digest()
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Date": date,
            "Authorization": f"{KEY}:{base64.b64encode(mac).decode()}",
        }
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        failures += resp.status != 207
    conn.close()
    done.put(failures)


def client_sender(url: str, sender: int, requests: int, start: Any, ready: Any, done: Any) -> None:
    """Send through this package's SuprsendClient (end to end, including its own work)."""
    from suprsend_celery import Event, SuprsendClient

    client = SuprsendClient(KEY, SECRET, base_url=url)
    batches = [
        [
            Event(
                f"user-{n % 5000}",
                "order_placed",
                {"order_id": f"ord-{sender}-{n}"},
                idempotency_key=f"bench-{sender}-{n}",
            )
            for n in range(r * BATCH, (r + 1) * BATCH)
        ]
        for r in range(requests)
    ]
    ready.put(sender)
    start.wait()
    failures = 0
    for batch in batches:
        result = client.send_bulk(batch)
        failures += len(result) - result.succeeded
    client.close()
    done.put(failures)


def get_json(url: str, path: str) -> Any:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200, help="bulk requests per sender")
    parser.add_argument("--client", choices=["raw", "suprsend"], default="raw")
    parser.add_argument("--in-process", action="store_true", help="sandbox in a thread here")
    args = parser.parse_args()

    server: subprocess.Popen[str] | None = None
    sandbox = None
    if args.in_process:
        from suprsend_celery.dev.sandbox import Sandbox

        sandbox = Sandbox(workspace_key=KEY, workspace_secret=SECRET).start()
        url = sandbox.url
    else:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "suprsend_celery.sandbox",
                "--port",
                "0",
                "--workspace-key",
                KEY,
                "--workspace-secret",
                SECRET,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert server.stdout is not None
        url = server.stdout.readline().rsplit(" ", 1)[-1].strip()
    try:
        ctx = mp.get_context("spawn")
        start = ctx.Event()
        ready = ctx.Queue()
        done = ctx.Queue()
        target = raw_sender if args.client == "raw" else client_sender
        procs = [
            ctx.Process(target=target, args=(url, s, args.requests, start, ready, done))
            for s in range(args.senders)
        ]
        for p in procs:
            p.start()
        for _ in procs:  # bodies are built before the clock starts
            ready.get(timeout=600)
        began = time.perf_counter()
        start.set()
        failures = sum(done.get(timeout=600) for _ in procs)
        elapsed = time.perf_counter() - began
        for p in procs:
            p.join(30)
        stats = get_json(url, "/_sandbox/stats")
    finally:
        if sandbox is not None:
            sandbox.stop()
        if server is not None:
            server.terminate()
            server.wait(10)
            if server.stdout is not None:
                server.stdout.close()
    events = args.senders * args.requests * BATCH
    print(
        f"{events} events in {args.senders * args.requests} bulk requests, "
        f"{args.senders} senders ({args.client}, sandbox "
        f"{'in-process' if args.in_process else 'in its own process'}): "
        f"{elapsed:.2f}s = {events / elapsed:,.0f} events/s, "
        f"{args.senders * args.requests / elapsed:,.0f} requests/s"
    )
    print(f"failures: {failures}; sandbox stats: {stats}")
    return 0 if failures == 0 and stats["events_processed"] == events else 1


if __name__ == "__main__":
    sys.exit(main())
