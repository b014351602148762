"""Placing an order: one transaction, events sent only if it commits."""

from django.db import transaction

from suprsend_celery import track_event
from suprsend_celery.contrib.django import buffer_event_on_commit

from .models import Order, Product


class OutOfStock(Exception):
    """Not enough stock: the order (and its events) are rolled back."""


def place_order(customer: str, sku: str, quantity: int) -> tuple[Order, list[str]]:
    """Create the order, queue its events, take the stock; all or nothing.

    The events are validated here but published only when the transaction commits:
    if taking the stock fails below, the order row disappears and no event is sent.
    Returns the order and the events' idempotency keys.
    """
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
    return order, keys
