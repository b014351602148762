"""Products with stock, and the orders that use it up."""

import uuid

from django.db import models


class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    stock = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.sku


class Order(models.Model):
    #: Public, never reused: the events' idempotency keys are built from it.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    customer = models.CharField(max_length=64)
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.public_id}"
