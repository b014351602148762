"""An order: the business row an outbox event commits (or rolls back) with."""

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=64)

    class Meta:
        app_label = "outbox_shop"
