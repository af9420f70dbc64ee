"""The demo storefront page itself (the browser test drives it end to end)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.factories import ItemFactory, ShopperFactory

pytestmark = pytest.mark.django_db


def test_the_storefront_is_for_staff_only():
    response = Client().get("/demo/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_storefront_lists_in_stock_products_most_popular_first_and_the_chosen_shopper():
    ItemFactory(external_id="mug", title="Blue mug", category="mugs", price="4.50", popularity=2.0)
    ItemFactory(external_id="bowl", title="Bowl", category="bowls", price=None, popularity=5.0)
    ItemFactory(external_id="gone", title="Sold out", in_stock=False, popularity=9.0)
    ShopperFactory(external_id="shopper-1")
    client = Client()
    client.force_login(get_user_model().objects.create_user("staff", password="x", is_staff=True))

    response = client.get("/demo/?user=someone-new")

    assert response.status_code == 200
    assert [product.item_id for product in response.context["products"]] == ["bowl", "mug"]
    assert response.context["product_data"][1] == {
        "item_id": "mug", "title": "Blue mug", "category": "mugs", "price": "4.50",
    }  # fmt: skip
    assert response.context["user_ids"] == ["someone-new", "shopper-1", "demo-visitor"]
    assert response.context["chosen_user"] == "someone-new"
    body = response.content.decode()
    assert 'data-item-id="mug"' in body and "Sold out" not in body
    # No external assets: the script and styles are inline.
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|url\(", body)
