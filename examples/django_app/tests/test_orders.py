"""The shop's tests: real orders, a real worker, and a SuprSend sandbox.

They expect what ``tests/test_django_example.py`` in the repository starts: Redis at
``CELERY_BROKER_URL``, a sandbox at ``SUPRSEND_BASE_URL`` and ``celery -A shop worker
--beat``. Transactions really commit here (``transaction=True``): an order's events
are written into the outbox in its transaction and moved to the Redis buffer right
after the commit, which a rolled-back test transaction never reaches.
"""

import os
import time
from typing import Any

import pytest
import requests
from django.test import Client
from orders.models import Order, Product

from suprsend_celery import buffer_stats
from suprsend_celery.contrib.django.models import OutboxEvent

pytestmark = pytest.mark.django_db(transaction=True)

SANDBOX_URL = os.environ.get("SUPRSEND_BASE_URL", "http://127.0.0.1:8787/")


def sandbox_events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = requests.get(SANDBOX_URL + "_sandbox/events", timeout=5).json()
    return events


def wait_for_events(keys: list[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Poll the sandbox until the events with these idempotency keys were processed."""
    deadline = time.monotonic() + timeout
    while True:
        found = {
            e["$idempotency_key"]: e for e in sandbox_events() if e.get("$idempotency_key") in keys
        }
        if len(found) == len(keys):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(
                f"events {sorted(set(keys) - set(found))} not delivered in {timeout}s"
            )
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def products() -> None:
    # The migration adds these, but transactional tests empty the tables after each test.
    Product.objects.update_or_create(sku="tea", defaults={"stock": 100})
    Product.objects.update_or_create(sku="mug", defaults={"stock": 3})


def test_committed_order_sends_both_events(client: Client) -> None:
    """Both events arrive: written with the order, moved after commit, sent in bulk."""
    response = client.post("/orders/", {"customer": "cust-commit", "sku": "tea", "quantity": "2"})
    assert response.status_code == 201, response.content
    placed_key, purchased_key = response.json()["events"]

    found = wait_for_events([placed_key, purchased_key])
    placed, purchased = found[placed_key], found[purchased_key]
    assert placed["event"] == "order_placed"
    assert purchased["event"] == "product_purchased"
    for event in (placed, purchased):
        assert event["distinct_id"] == "cust-commit"
        assert event["properties"]["quantity"] == 2
        assert event["properties"]["order_id"] == response.json()["order"]
    assert Product.objects.get(sku="tea").stock == 98
    assert not OutboxEvent.objects.exists(), "moved to the buffer after the commit"


def test_rolled_back_order_sends_nothing(client: Client) -> None:
    """Out of stock rolls the order back, and with it both of its events."""
    response = client.post(
        "/orders/", {"customer": "cust-rollback", "sku": "mug", "quantity": "10"}
    )
    assert response.status_code == 409, response.content
    assert not Order.objects.filter(customer="cust-rollback").exists()
    assert Product.objects.get(sku="mug").stock == 3

    # An order placed afterwards is the yardstick: once its events went through the
    # worker and the buffer, anything the rolled-back order had queued would have too.
    after = client.post("/orders/", {"customer": "cust-after", "sku": "tea", "quantity": "1"})
    assert after.status_code == 201
    wait_for_events(after.json()["events"])
    assert "cust-rollback" not in {e["distinct_id"] for e in sandbox_events()}
    stats = buffer_stats()
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (0, 0, 0)
