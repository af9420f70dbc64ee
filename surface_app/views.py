from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from graph_app.models import Shopper


@staff_member_required
def demo_page(request: HttpRequest) -> HttpResponse:
    """A storefront shelf that updates over the WebSocket; staff only (it uses the console session)."""
    user_ids = list(Shopper.objects.order_by("external_id").values_list("external_id", flat=True)[:50])
    return render(
        request,
        "surface_app/demo.html",
        {"user_ids": user_ids, "websocket_url": settings.WEBSOCKET_PUBLIC_URL},
    )
