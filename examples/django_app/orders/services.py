"""Placing an order: one transaction, and its events commit (or roll back) with it."""

from django.db import transaction

from suprsend_celery import Event
from suprsend_celery.contrib.django import outbox_events

from .models import Order, Product


class OutOfStock(Exception):
    """Not enough stock: the order (and its events) are rolled back."""


def place_order(customer: str, sku: str, quantity: int) -> tuple[Order, list[str]]:
    """Create the order, write its events, take the stock; all or nothing.

    The events are validated here (bad input raises) and written into the outbox table
    in this very transaction: if taking the stock fails below, the order row and the
    event rows disappear together. Nothing talks to Redis before the commit, so the
    order is placed even while Redis is down; its events wait in the outbox and the
    worker's next ``flush_buffer`` run relays them once Redis is back. With Redis up
    they reach the buffer right after the commit. Returns the order and the events'
    idempotency keys.
    """
    with transaction.atomic():
        product = Product.objects.select_for_update().get(sku=sku)
        order = Order.objects.create(customer=customer, product=product, quantity=quantity)
        properties = {"order_id": str(order.public_id), "sku": sku, "quantity": quantity}
        keys = outbox_events(
            [
                Event(
                    customer,
                    "order_placed",
                    properties,
                    idempotency_key=f"order-{order.public_id}-placed",
                ),
                Event(
                    customer,
                    "product_purchased",
                    properties,
                    idempotency_key=f"order-{order.public_id}-purchased",
                ),
            ]
        )
        if product.stock < quantity:
            raise OutOfStock(f"only {product.stock} {sku} left")
        product.stock -= quantity
        product.save(update_fields=["stock"])
    return order, keys
