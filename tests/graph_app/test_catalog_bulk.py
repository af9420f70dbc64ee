"""The catalog's bulk write path (graph_app.catalog_bulk) and the batch endpoints on it: rows, entity links, the
online catalog in Redis, the similar-items caches and the live shelves' message."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest
from django.conf import settings
from django.db import connection

from graph_app.apis import LONE_SURROGATE
from graph_app.catalog_bulk import ItemPatch, content_vectors, items_delete_many, items_patch_many, items_upsert_many
from graph_app.models import Entity, Item, ItemEntity
from graph_app.online import unpack_static
from graph_app.services import EntityRef, ItemInput, content_projection, item_content_vector
from personalization import redis_keys
from personalization.cache import item_cache_get, item_cache_peek
from personalization.errors import ApplicationError

pytestmark = pytest.mark.django_db


def _row(external_id: str, **fields) -> ItemInput:
    return ItemInput(external_id=external_id, title=fields.pop("title", f"Item {external_id}"), **fields)


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run a write and its after-commit publications (Redis, caches, shelves), as in autocommit."""

    def run(write):
        with django_capture_on_commit_callbacks(execute=True):
            return write()

    return run


def _linked(external_id: str) -> list[tuple[str, str, float]]:
    return sorted(
        ItemEntity.objects.filter(item__external_id=external_id).values_list(
            "entity__kind", "entity__external_id", "weight"
        )
    )


def test_upsert_many_writes_rows_links_and_the_online_catalog(committed, clean_redis):
    rows = [
        _row("b", category="kitchen", price=Decimal("4.50"), entities=(EntityRef("brand", "acme", "Acme"),)),
        _row("a", description="Blue", attributes={"colour": "blue"}, entities=(EntityRef("tag", "blue", weight=0.5),)),
    ]

    outcome = committed(lambda: items_upsert_many(rows=rows))

    assert (outcome.created, outcome.updated, outcome.deleted, outcome.missing) == (["b", "a"], [], [], [])
    b = Item.objects.get(external_id="b")
    assert (b.title, b.category, b.price, b.in_stock, b.embedding_source) == ("Item b", "kitchen", Decimal("4.50"),
                                                                            True, "content")  # fmt: skip
    assert Item.objects.get(external_id="a").attributes == {"colour": "blue"}
    assert _linked("b") == [("brand", "acme", 1.0)] and _linked("a") == [("tag", "blue", 0.5)]
    assert Entity.objects.get(kind="brand", external_id="acme").name == "Acme"
    for partition in redis_keys.partitions():
        key = redis_keys.catalog_entities(partition)
        assert clean_redis.hmget(key, ["a", "b"]) == [b"tag:blue", b"category:kitchen|brand:acme"]
    price, in_stock, created_at = unpack_static(clean_redis.hget(redis_keys.CATALOG_STATIC, "b"))
    assert (price, in_stock, created_at) == (4.5, True, b.created_at.timestamp())
    stored = np.frombuffer(clean_redis.hget(redis_keys.CATALOG_VECTORS, "b"), dtype=np.float32)
    assert np.array_equal(stored, np.asarray(b.embedding, dtype=np.float32))
    expected = item_content_vector(data=rows[0], projection=content_projection())
    assert np.allclose(stored, expected, atol=1e-5)


def test_upsert_many_tells_created_from_updated_and_what_appeared(committed, shelves):
    first = [_row("kept"), _row("sold-out", in_stock=False), _row("restocked", in_stock=False)]
    committed(lambda: items_upsert_many(rows=first))
    shelves()  # the first write's message

    outcome = committed(
        lambda: items_upsert_many(
            rows=[_row("kept", title="Renamed"), _row("restocked"), _row("new"), _row("new-out", in_stock=False),
                  _row("sold-out", in_stock=False)]
        )
    )  # fmt: skip

    assert (outcome.created, outcome.updated) == (["new", "new-out"], ["kept", "restocked", "sold-out"])
    assert shelves() == [
        # sold-out was sent as stored: nothing to tell.
        {"type": "shelf.catalog", "changed": ["kept", "new-out"], "appeared": ["new", "restocked"]}
    ]


def test_a_duplicate_id_in_one_call_the_last_row_wins(committed):
    outcome = committed(lambda: items_upsert_many(rows=[_row("a", title="First"), _row("a", title="Last")]))

    assert (outcome.created, outcome.updated) == (["a"], [])
    assert Item.objects.get(external_id="a").title == "Last"


def test_a_learned_embedding_survives_an_upsert_and_reaches_redis(committed, clean_redis):
    committed(lambda: items_upsert_many(rows=[_row("a"), _row("b")]))
    learned = np.linspace(-1, 1, settings.EMBEDDING_DIMENSIONS).astype(np.float32)
    Item.objects.filter(external_id="a").update(embedding=learned.tolist(), embedding_source="collaborative")
    content_before = np.asarray(Item.objects.get(external_id="b").embedding)

    committed(lambda: items_upsert_many(rows=[_row("a", title="New title"), _row("b", title="New title")]))

    a, b = Item.objects.get(external_id="a"), Item.objects.get(external_id="b")
    assert (a.embedding_source, b.embedding_source) == ("collaborative", "content")
    assert np.allclose(a.embedding, learned)
    assert not np.allclose(b.embedding, content_before)
    assert np.array_equal(np.frombuffer(clean_redis.hget(redis_keys.CATALOG_VECTORS, "a"), dtype=np.float32), learned)


def test_entities_are_upserted_and_links_replaced(committed):
    committed(
        lambda: items_upsert_many(
            rows=[_row("a", entities=(EntityRef("brand", "acme", "Acme"), EntityRef("tag", "red"))),
                  _row("b", entities=(EntityRef("brand", "acme"),))]
        )
    )  # fmt: skip

    committed(
        lambda: items_upsert_many(
            rows=[_row("a", entities=(EntityRef("brand", "acme", "ACME Corp"), EntityRef("tag", "blue", weight=2.0),
                                      EntityRef("tag", "blue", weight=3.0)))]
        )
    )  # fmt: skip

    assert _linked("a") == [("brand", "acme", 1.0), ("tag", "blue", 3.0)]
    assert _linked("b") == [("brand", "acme", 1.0)]
    assert dict(Entity.objects.values_list("external_id", "name")) == {"acme": "ACME Corp", "red": "", "blue": ""}
    # A reference without a name keeps the entity's name.
    committed(lambda: items_upsert_many(rows=[_row("b", entities=(EntityRef("brand", "acme"),))]))
    assert Entity.objects.get(external_id="acme").name == "ACME Corp"


def test_a_change_of_links_moves_the_catalog_version(committed, clean_redis):
    committed(lambda: items_upsert_many(rows=[_row("a", entities=(EntityRef("tag", "x"),))]))
    version = clean_redis.get(redis_keys.CATALOG_VERSION)

    committed(lambda: items_upsert_many(rows=[_row("a", entities=(EntityRef("tag", "y"),))]))

    assert clean_redis.get(redis_keys.CATALOG_VERSION) != version
    assert clean_redis.hget(redis_keys.catalog_entities(0), "a") == b"tag:y"


def test_an_upsert_marks_the_items_similar_lists_stale(committed, clean_redis):
    item_cache_get(item_key="a", name="similar_items", fresh_seconds=300, stale_seconds=3600, build=lambda: b"[]")
    key = redis_keys.item_cache("a", "similar_items")
    assert item_cache_peek(name="similar_items", fresh_seconds=300, stored=clean_redis.get(key)) == b"[]"

    committed(lambda: items_upsert_many(rows=[_row("a"), _row("b")]))

    assert clean_redis.get(key) is not None  # kept for readers while one rebuilds it
    assert item_cache_peek(name="similar_items", fresh_seconds=300, stored=clean_redis.get(key)) is None


def test_the_database_constraints_stay_the_guard(committed):
    with pytest.raises(ApplicationError) as refused:
        committed(lambda: items_upsert_many(rows=[_row("a"), _row("b", price=Decimal("-1"))]))

    assert list(refused.value.errors) == ["price"]
    assert not Item.objects.exists()


def test_patch_many_changes_only_the_fields_named(committed, clean_redis, shelves):
    committed(
        lambda: items_upsert_many(
            rows=[_row("a", price=Decimal("5.00"), attributes={"colour": "red", "size": "L"}),
                  _row("b", price=Decimal("7.00"), in_stock=False), _row("c", price=Decimal("9.00"))]
        )
    )  # fmt: skip
    embedding_b = np.asarray(Item.objects.get(external_id="b").embedding)
    shelves()

    outcome = committed(
        lambda: items_patch_many(
            patches=[
                ItemPatch("a", frozenset({"attributes"}), attributes={"size": None, "material": "wool"}),
                ItemPatch("b", frozenset({"in_stock", "price"}), in_stock=True, price=None),
                ItemPatch("nope", frozenset({"price"}), price=Decimal("1.00")),
                ItemPatch("c", frozenset({"in_stock"}), in_stock=False),
            ]
        )
    )

    assert (outcome.updated, outcome.missing, outcome.created, outcome.deleted) == (["a", "b", "c"], ["nope"], [], [])
    a, b, c = (Item.objects.get(external_id=name) for name in "abc")
    assert (a.attributes, a.price, a.in_stock) == ({"colour": "red", "material": "wool"}, Decimal("5.00"), True)
    assert (b.price, b.in_stock, b.attributes) == (None, True, {})
    assert (c.price, c.in_stock) == (Decimal("9.00"), False)
    # Attributes are content: a's vector follows them; b's stays.
    expected = item_content_vector(data=_row("a", attributes=a.attributes), projection=content_projection())
    assert np.allclose(a.embedding, expected, atol=1e-5)
    assert np.array_equal(np.asarray(b.embedding), embedding_b)
    assert np.allclose(np.frombuffer(clean_redis.hget(redis_keys.CATALOG_VECTORS, "a"), dtype=np.float32), expected)
    price_b, in_stock_b, _ = unpack_static(clean_redis.hget(redis_keys.CATALOG_STATIC, "b"))
    assert np.isnan(price_b) and in_stock_b
    assert unpack_static(clean_redis.hget(redis_keys.CATALOG_STATIC, "c"))[:2] == (9.0, False)
    assert shelves() == [{"type": "shelf.catalog", "changed": ["a", "c"], "appeared": ["b"]}]


def test_patches_of_one_item_in_one_call_apply_in_order(committed):
    committed(lambda: items_upsert_many(rows=[_row("a", attributes={"x": 1, "y": 2})]))

    committed(
        lambda: items_patch_many(
            patches=[
                ItemPatch("a", frozenset({"attributes", "price"}), attributes={"x": None, "z": 3}, price=Decimal("2")),
                ItemPatch("a", frozenset({"attributes"}), attributes={"x": 5, "y": None}),
            ]
        )
    )

    a = Item.objects.get(external_id="a")
    assert (a.attributes, a.price) == ({"x": 5, "z": 3}, Decimal("2.00"))


def test_a_patch_keeps_a_learned_embedding(committed):
    committed(lambda: items_upsert_many(rows=[_row("a")]))
    learned = np.linspace(1, -1, settings.EMBEDDING_DIMENSIONS).astype(np.float32)
    Item.objects.filter(external_id="a").update(embedding=learned.tolist(), embedding_source="collaborative")

    committed(lambda: items_patch_many(patches=[ItemPatch("a", frozenset({"attributes"}), attributes={"k": "v"})]))

    a = Item.objects.get(external_id="a")
    assert (a.embedding_source, a.attributes) == ("collaborative", {"k": "v"})
    assert np.allclose(a.embedding, learned)


def test_a_patch_must_name_known_fields():
    with pytest.raises(ValueError, match="non-empty subset"):
        items_patch_many(patches=[ItemPatch("a", frozenset())])
    with pytest.raises(ValueError, match="non-empty subset"):
        items_patch_many(patches=[ItemPatch("a", frozenset({"title"}))])


def test_delete_many_removes_rows_links_and_redis_keys(committed, clean_redis, shelves):
    rows = [_row("a", entities=(EntityRef("tag", "t"),)), _row("b", category="x"), _row("c", category="x")]
    committed(lambda: items_upsert_many(rows=rows))
    shelves()

    outcome = committed(lambda: items_delete_many(external_ids=["a", "nope", "b", "a"]))

    assert (outcome.deleted, outcome.missing) == (["a", "b"], ["nope"])
    assert list(Item.objects.values_list("external_id", flat=True)) == ["c"]
    assert not ItemEntity.objects.exists()
    assert Entity.objects.filter(external_id="t").exists()  # entities outlive their items
    for key in (redis_keys.CATALOG_STATIC, redis_keys.CATALOG_VECTORS, redis_keys.catalog_entities(0)):
        assert clean_redis.hmget(key, ["a", "b"]) == [None, None]
        assert clean_redis.hget(key, "c") is not None
    assert shelves() == [{"type": "shelf.catalog", "changed": ["a", "b"], "appeared": []}]


# The endpoints


def test_batch_patch_reports_per_index(api_client):
    api_client.post("/api/v1/items/batch", {"items": [{"item_id": "a", "title": "A", "price": "3.00",
                                                       "attributes": {"k": "v"}}]}, format="json")  # fmt: skip

    response = api_client.patch(
        "/api/v1/items/batch",
        {
            "items": [
                {"item_id": "a", "price": None, "attributes": {"k": None, "n": 1}},
                {"item_id": "a", "colour": "red"},
                {"item_id": "a"},
                {"item_id": "ghost", "in_stock": False},
                {"item_id": "a", "price": "-2"},
                "not an object",
                {"in_stock": True},
            ]
        },
        format="json",
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["updated"], body["missing"]) == (1, 1)
    assert [(error["index"], error["field"]) for error in body["errors"]] == [
        (1, "colour"), (2, "item"), (4, "price"), (5, "item"), (6, "item_id"),
    ]  # fmt: skip
    assert [(row["item_id"], row["status"]) for row in body["results"]] == [
        ("a", "updated"), ("a", "error"), ("a", "error"), ("ghost", "missing"), ("a", "error"), (None, "error"),
        (None, "error"),
    ]  # fmt: skip
    a = Item.objects.get(external_id="a")
    assert (a.price, a.attributes) == (None, {"n": 1})


def test_batch_patch_and_delete_limits(api_client):
    too_many = {"items": [{"item_id": f"i{n}", "price": "1"} for n in range(1001)]}
    assert api_client.patch("/api/v1/items/batch", too_many, format="json").status_code == 400
    assert api_client.patch("/api/v1/items/batch", {"items": []}, format="json").status_code == 400
    ids = {"item_ids": [f"i{n}" for n in range(1001)]}
    assert api_client.post("/api/v1/items/batch/delete", ids, format="json").status_code == 400
    empty = api_client.post("/api/v1/items/batch/delete", {"item_ids": []}, format="json")
    assert (empty.status_code, list(empty.json()["errors"])) == (400, ["item_ids"])
    bad = api_client.post("/api/v1/items/batch/delete", {"item_ids": ["a", ""]}, format="json")
    assert (bad.status_code, list(bad.json()["errors"])) == (400, ["item_ids.1"])


def test_batch_endpoints_need_a_server_key(anonymous_client):
    assert (
        anonymous_client.patch("/api/v1/items/batch", {"items": [{"item_id": "a"}]}, format="json").status_code == 401
    )
    assert anonymous_client.post("/api/v1/items/batch/delete", {"item_ids": ["a"]}, format="json").status_code == 401


def test_a_batch_of_1000_round_trip(api_client, clean_redis, django_capture_on_commit_callbacks):
    rows = [
        {"item_id": f"sku-{n:04d}", "title": f"Item {n}", "category": f"c{n % 7}", "price": f"{n % 50}.99",
         "entities": [{"kind": "brand", "id": f"b{n % 13}"}]}
        for n in range(1000)
    ]  # fmt: skip

    with django_capture_on_commit_callbacks(execute=True):
        created = api_client.post("/api/v1/items/batch", {"items": rows}, format="json").json()
        updated = api_client.post("/api/v1/items/batch", {"items": rows}, format="json").json()
        patched = api_client.patch(
            "/api/v1/items/batch", {"items": [{"item_id": row["item_id"], "in_stock": False} for row in rows]},
            format="json",
        ).json()  # fmt: skip

    assert (created["created"], created["updated"], created["errors"]) == (1000, 0, [])
    assert (updated["created"], updated["updated"]) == (0, 1000)
    assert {row["status"] for row in updated["results"]} == {"updated"}
    assert (patched["updated"], patched["missing"]) == (1000, 0)
    assert Item.objects.filter(in_stock=False).count() == 1000
    assert ItemEntity.objects.count() == 1000 and Entity.objects.count() == 13
    assert clean_redis.hlen(redis_keys.CATALOG_STATIC) == clean_redis.hlen(redis_keys.CATALOG_VECTORS) == 1000

    with django_capture_on_commit_callbacks(execute=True):
        deleted = api_client.post(
            "/api/v1/items/batch/delete", {"item_ids": ["ghost"] + [row["item_id"] for row in rows[1:]]}, format="json"
        )

    assert (deleted.status_code, deleted.json()) == (200, {"deleted": 999, "missing": ["ghost"]})
    assert list(Item.objects.values_list("external_id", flat=True)) == ["sku-0000"]
    assert (
        clean_redis.hkeys(redis_keys.CATALOG_STATIC) == clean_redis.hkeys(redis_keys.CATALOG_VECTORS) == [b"sku-0000"]
    )


def test_content_vectors_of_a_batch_are_each_items_content_vector():
    rows = [
        _row("a", description="Soft wool " * 150, category="Knitwear", attributes={"size": "L", "new": True, "n": 2}),
        _row("b", title="Çafé crème ☕", entities=(EntityRef("brand", "ACME", weight=0.25), EntityRef("tag", "x"))),
        _row("c", title="!!!", attributes={"nested": {"ignored": 1}}),
        _row("d", title="Mug", category="kitchen"),
    ]
    projection = content_projection()

    vectors = content_vectors(rows=rows, projection=projection)

    for row, vector in zip(rows, vectors, strict=True):
        assert np.allclose(vector, item_content_vector(data=row, projection=projection), atol=1e-6), row.external_id
    assert not vectors[2].any()  # no feature at all: the zero vector, as item_content_vector gives


def test_content_vectors_read_words_of_any_text_as_the_item_content_vector_does():
    # ASCII text is split by a byte table, other text by the regular expression: the same words either way,
    # including letters that lowercase into ASCII (the Kelvin sign) and digits next to punctuation.
    rows = [
        _row("ascii", title="BLUE-Mug_2000 (x3)", description="Tab\tand\nnew line; 12.5cm", category="Mugs"),
        _row("other", title="\u212aelvin Stra\u00dfe \u0130stanbul na\u00efve 12ab", description="\u00e9t\u00e9 2024"),
        _row("mixed", title="Plain title", description="d\u00e9j\u00e0 vu BLUE", attributes={"Colour": "Bleu \u00c9"}),
        _row("repeat", title="BLUE-Mug_2000 (x3)", description="Tab\tand\nnew line; 12.5cm", category="Mugs"),
    ]
    projection = content_projection()

    vectors = content_vectors(rows=rows, projection=projection)

    for row, vector in zip(rows, vectors, strict=True):
        assert np.allclose(vector, item_content_vector(data=row, projection=projection), atol=1e-6), row.external_id
    assert np.array_equal(vectors[0], vectors[3])  # the second time from the kept feature codes


def test_the_vectors_reach_postgresql_and_redis_exactly(committed, clean_redis):
    rows = [_row(f"v{index}", title=f"Vector {index} \u00e9", category=f"c{index % 3}") for index in range(5)]

    committed(lambda: items_upsert_many(rows=rows))

    expected = content_vectors(rows=rows, projection=content_projection())
    for row, vector in zip(rows, expected, strict=True):
        stored = np.asarray(Item.objects.get(external_id=row.external_id).embedding, dtype=np.float32)
        assert np.array_equal(stored, vector)
        assert clean_redis.hget(redis_keys.CATALOG_VECTORS, row.external_id) == vector.tobytes()


def test_an_unchanged_row_is_not_written_again(committed):
    rows = [_row("same", attributes={"a": 1}, entities=(EntityRef("tag", "t"),)), _row("edited")]
    committed(lambda: items_upsert_many(rows=rows))
    long_ago = datetime(2026, 1, 1, tzinfo=UTC)
    Item.objects.update(updated_at=long_ago)
    links_before = list(ItemEntity.objects.values_list("id", flat=True))

    outcome = committed(lambda: items_upsert_many(rows=[rows[0], _row("edited", title="Edited")]))
    committed(lambda: items_patch_many(patches=[ItemPatch("same", frozenset({"attributes"}), attributes={"a": 1})]))

    assert outcome.updated == ["same", "edited"]
    updated_at = dict(Item.objects.values_list("external_id", "updated_at"))
    assert updated_at["same"] == long_ago and updated_at["edited"] > long_ago
    assert list(ItemEntity.objects.values_list("id", flat=True)) == links_before


def test_an_item_that_appears_marks_its_neighbours_similar_lists_stale(committed, clean_redis, monkeypatch):
    mug = {"title": "Red spotted mug", "description": "Ceramic tea mug", "category": "kitchen"}
    committed(lambda: items_upsert_many(rows=[_row("mug", **mug), _row("rug", title="Wool rug", category="floor")]))
    for item_id in ("mug", "rug"):
        item_cache_get(
            item_key=item_id, name="similar_items", fresh_seconds=300, stale_seconds=3600, build=lambda: b"[]"
        )

    def fresh(item_id: str) -> bool:
        stored = clean_redis.get(redis_keys.item_cache(item_id, "similar_items"))
        return item_cache_peek(name="similar_items", fresh_seconds=300, stored=stored) is not None

    monkeypatch.setattr("graph_app.catalog_bulk.NEIGHBOURS_TOUCHED", 1)
    committed(lambda: items_upsert_many(rows=[_row("mug-twin", **mug)]))

    assert (fresh("mug"), fresh("rug")) == (False, True)  # the twin's nearest item is the mug only

    monkeypatch.setattr("graph_app.catalog_bulk.NEIGHBOUR_LISTS_TOUCHED_MAX", 1)
    _similar_list_cache("mug")
    committed(lambda: items_upsert_many(rows=[_row("mug-2", **mug), _row("mug-3", **mug)]))

    assert fresh("mug")  # more items appeared than searched for: the lists catch up within their freshness


def test_an_item_back_in_stock_marks_its_own_similar_list_stale(committed, clean_redis):
    committed(lambda: items_upsert_many(rows=[_row("lamp", title="Desk lamp", in_stock=False)]))
    _similar_list_cache("lamp")
    key = redis_keys.item_cache("lamp", "similar_items")
    assert item_cache_peek(name="similar_items", fresh_seconds=300, stored=clean_redis.get(key)) == b"[]"

    committed(lambda: items_upsert_many(rows=[_row("lamp", title="Desk lamp", in_stock=True)]))

    assert item_cache_peek(name="similar_items", fresh_seconds=300, stored=clean_redis.get(key)) is None


def _similar_list_cache(item_id: str) -> None:
    item_cache_get(item_key=item_id, name="similar_items", fresh_seconds=300, stale_seconds=3600, build=lambda: b"[]")


def test_a_price_or_stock_change_is_a_heap_only_update(committed):
    # The pages' free room (fillfactor 50) lets the new row versions stay off the indexes, the vector one above all.
    rows = [_row(f"{group}{n}", price=Decimal("1.00")) for group in "ab" for n in range(40)]
    committed(lambda: items_upsert_many(rows=rows))
    changes = frozenset({"price", "in_stock"})
    patches = [ItemPatch(f"a{n}", changes, price=None, in_stock=False) for n in range(40)]
    before = _heap_only_updates()

    committed(lambda: items_patch_many(patches=patches))
    after_patch = _heap_only_updates()
    committed(lambda: items_upsert_many(rows=[_row(f"b{n}", price=Decimal("3.00")) for n in range(40)]))

    assert (after_patch - before, _heap_only_updates() - after_patch) == (40, 40)


def _heap_only_updates() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_get_xact_tuples_hot_updated('graph_app_item'::regclass)")
        return cursor.fetchone()[0]


def test_prices_and_weights_given_as_other_numbers_are_taken(committed):
    # Callers such as the demo data pass plain numbers; the arrays sent in binary take one type each.
    rows = [
        _row("a", price=5, entities=(EntityRef("tag", "x", weight=2), EntityRef("tag", "y", weight=0.5))),
        _row("b", price=Decimal("1.25")),
        _row("c", price=2.5),
    ]

    committed(lambda: items_upsert_many(rows=rows))

    assert dict(Item.objects.values_list("external_id", "price")) == {
        "a": Decimal("5.00"), "b": Decimal("1.25"), "c": Decimal("2.50"),
    }  # fmt: skip
    assert _linked("a") == [("tag", "x", 2.0), ("tag", "y", 0.5)]


def test_a_row_resent_unchanged_is_rewritten_online_but_tells_no_one(committed, clean_redis, shelves):
    rows = [_row("a", category="kitchen", price=Decimal("2.00")), _row("b", category="kitchen")]
    committed(lambda: items_upsert_many(rows=rows))
    _similar_list_cache("a")
    version = clean_redis.get(redis_keys.CATALOG_VERSION)
    clean_redis.hdel(redis_keys.CATALOG_STATIC, "a")  # as if Redis had lost it
    shelves()

    outcome = committed(lambda: items_upsert_many(rows=rows))
    committed(lambda: items_patch_many(patches=[ItemPatch("a", frozenset({"price"}), price=Decimal("2"))]))

    assert outcome.updated == ["a", "b"]
    assert unpack_static(clean_redis.hget(redis_keys.CATALOG_STATIC, "a"))[:2] == (2.0, True)
    assert clean_redis.get(redis_keys.CATALOG_VERSION) == version  # serving keeps the facts it read
    stored = clean_redis.get(redis_keys.item_cache("a", "similar_items"))
    assert item_cache_peek(name="similar_items", fresh_seconds=300, stored=stored) is not None
    assert shelves() == []


def test_a_lone_surrogate_in_attributes_is_refused_naming_the_field(api_client):
    # JSON's \ud800 escape parses to text that jsonb cannot store: a 400 naming attributes, never a 500.
    body = '{"items": [{"item_id": "a", "title": "A"}, {"item_id": "b", "title": "B", "attributes": {"k": "\\ud800"}}]}'

    json_body = "application/json"
    batch = api_client.post("/api/v1/items/batch", body, content_type=json_body)
    patched = '{"items": [{"item_id": "a", "attributes": {"\\udc00": 1}}]}'
    patch = api_client.patch("/api/v1/items/batch", patched, content_type=json_body)
    single = api_client.put(
        "/api/v1/items/c", '{"title": "C", "attributes": {"k": ["\\ud800"]}}', content_type=json_body
    )

    assert batch.status_code == 200
    assert batch.json()["errors"] == [{"index": 1, "field": "attributes", "message": LONE_SURROGATE}]
    assert (patch.status_code, patch.json()["errors"][0]["field"]) == (200, "attributes")
    assert (single.status_code, list(single.json()["errors"])) == (400, ["attributes"])
    assert list(Item.objects.values_list("external_id", flat=True)) == ["a"]
