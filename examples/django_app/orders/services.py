"""Placing an order: one transaction, events sent only if it commits."""

import logging

from django.db import transaction

from suprsend_celery import BufferUnavailableError, PublishError, track_event
from suprsend_celery.contrib.django import buffer_event_on_commit

from .models import Order, Product

logger = logging.getLogger(__name__)


class OutOfStock(Exception):
    """Not enough stock: the order (and its events) are rolled back."""


def place_order(customer: str, sku: str, quantity: int) -> tuple[Order, list[str]]:
    """Create the order, queue its events, take the stock; all or nothing.

    The events are validated here but published only when the transaction commits:
    if taking the stock fails below, the order row disappears and no event is sent.
    Returns the order and the events' idempotency keys.

    With Redis or the broker down, the on-commit publish fails within
    ``suprsend_accept_timeout`` (``BufferUnavailableError`` / ``PublishError``), after
    the order committed (Django then skips the remaining on-commit callbacks): the order
    stands and the events' keys are logged, to be sent again with the same keys
    (SuprSend skips a key it already has).
    """
    try:
        with transaction.atomic():
            product = Product.objects.select_for_update().get(sku=sku)
            order = Order.objects.create(customer=customer, product=product, quantity=quantity)
            properties = {"order_id": str(order.public_id), "sku": sku, "quantity": quantity}
            keys = [
                # Direct path: one Celery task, published on commit.
                track_event.delay_on_commit(
                    customer,
                    "order_placed",
                    properties,
                    idempotency_key=f"order-{order.public_id}-placed",
                ),
                # Buffered path: appended to the Redis buffer on commit, flushed in bulk.
                buffer_event_on_commit(
                    customer,
                    "product_purchased",
                    properties,
                    idempotency_key=f"order-{order.public_id}-purchased",
                ),
            ]
            if product.stock < quantity:
                raise OutOfStock(f"only {product.stock} {sku} left")
            product.stock -= quantity
            product.save(update_fields=["stock"])
    except (BufferUnavailableError, PublishError) as exc:
        logger.error("order %s placed; events %s may be unsent: %s", order.public_id, keys, exc)
    return order, keys
