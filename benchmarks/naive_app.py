"""The naive alternative: one Celery task per event that calls ``requests.post``.

What a team writes in an afternoon: the task builds the record, signs it the way the
SDK does and posts it with ``requests.post`` (a new connection per call, as the SDK
itself does). Configured from the same environment variables as the relay app::

    celery -A benchmarks.naive_app worker -Q naive
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from email.utils import formatdate
from typing import Any

import requests
from celery import Celery

_broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("naive")
app.conf.update(
    broker_url=_broker,
    result_backend=_broker,
    task_default_queue=os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "naive"),
    broker_connection_retry_on_startup=True,
)

KEY = os.environ.get("SUPRSEND_WORKSPACE_KEY", "")
SECRET = os.environ.get("SUPRSEND_WORKSPACE_SECRET", "")
BASE_URL = os.environ.get("SUPRSEND_BASE_URL", "https://hub.suprsend.com/")
CONTENT_TYPE = "application/json; charset=utf-8"


@app.task(name="benchmarks.naive_track", bind=True, max_retries=5)
def naive_track(
    self: Any,
    distinct_id: str,
    event_name: str,
    properties: dict[str, Any],
    idempotency_key: str | None = None,
) -> int:
    record = {
        "$insert_id": str(uuid.uuid4()),
        "$time": int(time.time() * 1000),
        "event": event_name,
        "env": KEY,
        "distinct_id": distinct_id,
        "properties": {**properties, "$ss_sdk_version": "naive/1.0"},
    }
    if idempotency_key:
        record["$idempotency_key"] = idempotency_key
    body = json.dumps(record, ensure_ascii=False).encode("utf-8")
    date = formatdate(usegmt=True)
    to_sign = f"POST\n{hashlib.md5(body).hexdigest()}\n{CONTENT_TYPE}\n{date}\n/v2/event/"
    mac = hmac.new(SECRET.encode(), to_sign.encode(), hashlib.sha256).digest()
    headers = {
        "Content-Type": CONTENT_TYPE,
        "Date": date,
        "Authorization": f"{KEY}:{base64.b64encode(mac).decode()}",
    }
    try:
        response = requests.post(BASE_URL + "v2/event/", data=body, headers=headers, timeout=10)
    except requests.RequestException as exc:
        raise self.retry(exc=exc, countdown=1) from None
    if response.status_code >= 500 or response.status_code == 429:
        raise self.retry(countdown=1)
    return response.status_code
