from dataclasses import asdict

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from personalization.access import STAFF_SESSION, endpoint_access
from surface_app.selectors import storefront_products, storefront_users

GRID_PRODUCTS = 24
USERS_LISTED = 50
VISITOR = "demo-visitor"


@endpoint_access(STAFF_SESSION)
@staff_member_required
def demo_page(request: HttpRequest) -> HttpResponse:
    """A small storefront: a product grid, a home shelf and a product page's similar items that update live over the
    WebSocket, and an inline tracker that sends views, clicks and add-to-carts. Staff only: it uses the console
    session (for the API and the socket) instead of an API key."""
    user_ids = storefront_users(limit=USERS_LISTED)
    chosen = request.GET.get("user", "")[:200]
    if chosen and chosen not in user_ids:
        user_ids.insert(0, chosen)
    products = storefront_products(limit=GRID_PRODUCTS)
    return render(
        request,
        "surface_app/demo.html",
        {
            "user_ids": [*user_ids, VISITOR] if VISITOR not in user_ids else user_ids,
            "chosen_user": chosen or (user_ids[0] if user_ids else VISITOR),
            "products": products,
            "product_data": [asdict(product) for product in products],
            "websocket_url": settings.WEBSOCKET_PUBLIC_URL,
        },
    )
