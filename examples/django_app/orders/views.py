"""``POST /orders/`` places an order; its events commit with it, in the outbox."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from suprsend_celery import InvalidEventError, SuprsendCeleryError

from .models import Product
from .services import OutOfStock, place_order


@require_GET
def index(request: HttpRequest) -> JsonResponse:
    products = {p.sku: p.stock for p in Product.objects.order_by("sku")}
    return JsonResponse({"products": products, "order": "POST /orders/ customer, sku, quantity"})


@require_POST
def place_order_view(request: HttpRequest) -> JsonResponse:
    customer = request.POST.get("customer", "").strip()
    sku = request.POST.get("sku", "").strip()
    try:
        quantity = int(request.POST.get("quantity", "1"))
    except ValueError:
        return JsonResponse({"error": "quantity must be a whole number"}, status=400)
    if not customer or quantity < 1:
        return JsonResponse({"error": "customer and a positive quantity are required"}, status=400)
    try:
        order, keys = place_order(customer, sku, quantity)
    except Product.DoesNotExist:
        return JsonResponse({"error": f"no product {sku!r}"}, status=404)
    except OutOfStock as exc:
        return JsonResponse({"error": str(exc), "events": []}, status=409)
    except InvalidEventError as exc:  # e.g. a customer id SuprSend would refuse
        return JsonResponse({"error": str(exc)}, status=400)
    except SuprsendCeleryError as exc:  # e.g. OutboxFullError: no relay for a long time
        return JsonResponse({"error": f"notifications unavailable: {exc}"}, status=503)
    return JsonResponse({"order": str(order.public_id), "events": keys}, status=201)
