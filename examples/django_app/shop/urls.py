"""URLs of the example shop."""

from django.urls import path
from orders import views

urlpatterns = [
    path("", views.index, name="index"),
    path("orders/", views.place_order_view, name="place-order"),
]
