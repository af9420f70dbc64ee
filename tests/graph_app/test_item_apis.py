from __future__ import annotations

import pytest

from graph_app.models import Item, ItemEntity

pytestmark = pytest.mark.django_db

MUG = {
    "title": "Red retrospot mug",
    "description": "A mug with red spots",
    "category": "kitchen",
    "price": "4.50",
    "in_stock": True,
    "attributes": {"colour": "red", "material": "ceramic"},
    "entities": [
        {"kind": "brand", "id": "retrospot", "name": "Retrospot"},
        {"kind": "tag", "id": "red", "weight": 0.5},
    ],
}


def test_put_creates_item_with_entities_and_a_content_embedding(api_client):
    response = api_client.put("/api/v1/items/mug-1", MUG, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["item_id"] == "mug-1"
    assert body["price"] == 4.5
    assert body["embedding_source"] == "content"
    assert sorted((e["kind"], e["id"], e["weight"]) for e in body["entities"]) == [
        ("brand", "retrospot", 1.0),
        ("tag", "red", 0.5),
    ]
    item = Item.objects.get(external_id="mug-1")
    assert item.attributes == {"colour": "red", "material": "ceramic"}
    assert len(item.embedding) == 64
    assert abs(sum(value * value for value in item.embedding) - 1.0) < 1e-4


def test_put_again_updates_and_replaces_entities(api_client):
    api_client.put("/api/v1/items/mug-1", MUG, format="json")

    response = api_client.put(
        "/api/v1/items/mug-1",
        {**MUG, "title": "Blue mug", "in_stock": False, "entities": [{"kind": "tag", "id": "blue"}]},
        format="json",
    )

    assert response.status_code == 200
    item = Item.objects.get(external_id="mug-1")
    assert (item.title, item.in_stock) == ("Blue mug", False)
    assert list(ItemEntity.objects.filter(item=item).values_list("entity__external_id", flat=True)) == ["blue"]
    assert Item.objects.count() == 1


def test_get_returns_item_and_unknown_item_is_404(api_client):
    api_client.put("/api/v1/items/mug-1", MUG, format="json")

    assert api_client.get("/api/v1/items/mug-1").json()["title"] == "Red retrospot mug"
    missing = api_client.get("/api/v1/items/nope")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


def test_delete_removes_item(api_client):
    api_client.put("/api/v1/items/mug-1", MUG, format="json")

    assert api_client.delete("/api/v1/items/mug-1").status_code == 204
    assert not Item.objects.filter(external_id="mug-1").exists()
    assert api_client.delete("/api/v1/items/mug-1").status_code == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price": "-1"}, "price"),
        ({"title": ""}, "title"),
        ({"title": "bad\u0000title"}, "title"),
        ({"attributes": ["not", "an", "object"]}, "attributes"),
        ({"attributes": {"note": "nul\u0000"}}, "attributes"),
        ({"in_stock": "maybe"}, "in_stock"),
        ({"entities": [{"kind": "not a slug!", "id": "x"}]}, "entities.0.kind"),
        ({"entities": [{"kind": "tag"}]}, "entities.0.id"),
    ],
)
def test_put_rejects_bad_input_naming_the_field(api_client, change, field):
    api_client.put("/api/v1/items/mug-1", MUG, format="json")

    response = api_client.put("/api/v1/items/mug-1", {**MUG, **change}, format="json")

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert field in body["errors"]
    # The stored item is untouched.
    assert Item.objects.get(external_id="mug-1").title == "Red retrospot mug"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/items/a%00b"),
        ("delete", "/api/v1/items/a%00b"),
        ("get", "/api/v1/items/a%00b/similar"),
        ("put", "/api/v1/items/a%00b"),
        ("get", f"/api/v1/items/{'x' * 201}"),
        ("delete", f"/api/v1/items/{'x' * 201}"),
        ("get", f"/api/v1/items/{'x' * 201}/similar"),
    ],
)
def test_a_bad_item_id_in_the_path_is_400_naming_item_id(api_client, method, path):
    response = (
        getattr(api_client, method)(path, MUG, format="json") if method == "put" else getattr(api_client, method)(path)
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert "item_id" in response.json()["errors"]


def test_a_value_postgresql_refuses_is_answered_400_not_500():
    """The safety net behind the views' own checks: a DataError is bad input."""
    from django.db import DataError

    from personalization.exception_handler import api_exception_handler

    with pytest.raises(DataError) as refused:
        Item.objects.filter(external_id="a\x00b").exists()

    response = api_exception_handler(refused.value, {})

    assert response is not None
    assert response.status_code == 400
    assert response.data["code"] == "invalid"


def test_put_without_title_is_400(api_client):
    response = api_client.put("/api/v1/items/mug-1", {"price": "1.00"}, format="json")
    assert response.status_code == 400
    assert "title" in response.json()["errors"]


def test_item_endpoints_require_a_key(anonymous_client):
    assert anonymous_client.put("/api/v1/items/mug-1", MUG, format="json").status_code == 401
    assert anonymous_client.get("/api/v1/items/mug-1").status_code == 401
    assert not Item.objects.exists()


def test_batch_upserts_and_reports_per_index(api_client):
    api_client.put("/api/v1/items/existing", MUG, format="json")

    response = api_client.post(
        "/api/v1/items/batch",
        {
            "items": [
                {"item_id": "new-1", "title": "New one"},
                {"item_id": "existing", "title": "Renamed"},
                {"item_id": "bad", "title": "Bad", "price": "-3"},
                "not an object",
                {"title": "No id"},
            ]
        },
        format="json",
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["created"], body["updated"]) == (1, 1)
    assert {(error["index"], error["field"]) for error in body["errors"]} == {(2, "price"), (3, "item"), (4, "item_id")}
    assert [row["status"] for row in body["results"]] == ["created", "updated", "error", "error", "error"]
    assert Item.objects.get(external_id="existing").title == "Renamed"
    assert not Item.objects.filter(external_id="bad").exists()


def test_batch_limits(api_client):
    too_many = {"items": [{"item_id": f"i{n}", "title": "x"} for n in range(1001)]}
    assert api_client.post("/api/v1/items/batch", too_many, format="json").status_code == 400
    empty = api_client.post("/api/v1/items/batch", {"items": []}, format="json")
    assert empty.status_code == 400
    assert "items" in empty.json()["errors"]
    assert not Item.objects.exists()
