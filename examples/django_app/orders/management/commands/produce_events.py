"""``python manage.py produce_events``: place orders in a loop, like a shop's traffic.

Every few orders asks for more mugs than there are, so you can watch a rolled-back
order send nothing while the others show up in Flower and the sandbox.
"""

import itertools
import random
import time
from typing import Any

from django.core.management.base import BaseCommand

from orders.models import Product
from orders.services import OutOfStock, place_order


class Command(BaseCommand):
    help = "Place orders in a loop; each committed order sends two events."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--every", type=float, default=2.0, help="seconds between orders")
        parser.add_argument("--count", type=int, default=0, help="orders to place (0: forever)")

    def handle(self, *args: Any, every: float, count: int, **options: Any) -> None:
        Product.objects.get_or_create(sku="tea", defaults={"stock": 1_000_000})
        Product.objects.get_or_create(sku="mug", defaults={"stock": 3})
        numbers = itertools.count(1) if count <= 0 else range(1, count + 1)
        for n in numbers:
            customer = f"customer-{random.randint(1, 50)}"
            sku, quantity = ("mug", 10) if n % 5 == 0 else ("tea", random.randint(1, 3))
            try:
                order, keys = place_order(customer, sku, quantity)
            except OutOfStock as exc:
                self.stdout.write(f"#{n} rolled back ({exc}): no events sent")
            else:
                self.stdout.write(f"#{n} order {order.public_id}: events {', '.join(keys)}")
            time.sleep(every)
