from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from django.utils import timezone

from graph_app.models import Item, ItemEntity, ItemNeighbour
from graph_app.neighbourhoods import neighbourhoods_refresh
from graph_app.neighbourhoods_online import (
    Neighbour,
    item_neighbours,
    neighbour_explanation,
    neighbours_decode,
    neighbours_queue,
)
from graph_app.tasks import neighbourhoods_refresh_task
from operations.bootstrap import DEFAULT_SCHEDULES
from personalization import redis_keys
from tests.factories import EntityFactory, EventFactory, ItemEntityFactory, ItemFactory

pytestmark = pytest.mark.django_db


def _link(item, entity, weight: float = 1.0) -> None:
    ItemEntityFactory(item=item, entity=entity, weight=weight)


@pytest.fixture
def kitchen_catalog():
    """8 items. idf(e) = ln(8 / n_e) / ln(8): kitchen (6 items) 0.138346, retrospot (3) 0.471679, red and
    garden (2 each) 0.666667."""
    items = {name: ItemFactory(external_id=name, title=f"Item {name.upper()}") for name in "abcdefgh"}
    kitchen = EntityFactory(kind="category", external_id="kitchen", name="Kitchen")
    garden = EntityFactory(kind="category", external_id="garden", name="Garden")
    retrospot = EntityFactory(kind="theme", external_id="retrospot", name="Retrospot")
    red = EntityFactory(kind="colour", external_id="red", name="Red")
    for name in "abcdef":
        _link(items[name], kitchen)
    for name in "gh":
        _link(items[name], garden)
    _link(items["a"], retrospot)
    _link(items["b"], retrospot)
    _link(items["c"], retrospot, weight=0.5)
    _link(items["a"], red)
    _link(items["d"], red, weight=0.5)
    return items


def _stored(item_id: str) -> list[tuple[str, float, str, str, str]]:
    return [
        (row.neighbour_id, row.score, row.source, row.via, row.via_name)
        for row in ItemNeighbour.objects.filter(item_id=item_id).order_by("-score", "neighbour_id")
    ]


def test_entity_neighbours_rank_by_idf_and_relation_weights(kitchen_catalog):
    report = neighbourhoods_refresh()

    assert _stored("a") == [
        ("b", 0.610025, "entity", "theme:retrospot", "Retrospot"),  # kitchen + retrospot
        ("d", 0.471679, "entity", "colour:red", "Red"),  # kitchen + red * 1 * 0.5
        ("c", 0.374185, "entity", "theme:retrospot", "Retrospot"),  # kitchen + retrospot * 1 * 0.5
        ("e", 0.138346, "entity", "category:kitchen", "Kitchen"),
        ("f", 0.138346, "entity", "category:kitchen", "Kitchen"),
    ]
    assert _stored("g") == [("h", 0.666667, "entity", "category:garden", "Garden")]
    assert (report.items, report.items_with_neighbours, report.co_occurrence_neighbours) == (8, 8, 0)
    assert report.neighbours == report.entity_neighbours == ItemNeighbour.objects.count() == 6 * 5 + 2


def test_only_the_k_best_are_kept(kitchen_catalog):
    neighbourhoods_refresh(k=2)

    assert [row[0] for row in _stored("a")] == ["b", "d"]
    assert [row[0] for row in _stored("e")] == ["a", "b"]  # a tie of five: the lowest ids win


@pytest.fixture
def shop_with_history():
    """Users' item sets over the last 90 days (positive event types only):
    p {u1 u2 u3 u5}, q {u1 u2 u4}, r {u1 u3}, s {u4 u5}, z {u1 .. u10}; t has only a skip and old views.
    Entities: owl on p and s, blue on q and z; idf = ln(6 / 2) / ln(6) = 0.613147."""
    titles = {"p": "Paper owl", "q": "Blue mug", "r": "Red mug", "s": "Owl cushion", "t": "Teapot", "z": "Tote bag"}
    items = {item_id: ItemFactory(external_id=item_id, title=title) for item_id, title in titles.items()}
    owl = EntityFactory(kind="theme", external_id="owl", name="Owl")
    blue = EntityFactory(kind="colour", external_id="blue", name="Blue")
    _link(items["p"], owl)
    _link(items["s"], owl)
    _link(items["q"], blue)
    _link(items["z"], blue)
    histories = {
        "u1": "pqrz",
        "u2": "pqz",
        "u3": "prz",
        "u4": "qsz",
        "u5": "psz",
        **{f"u{user}": "z" for user in range(6, 11)},
    }
    now = timezone.now()
    for user, item_ids in histories.items():
        for position, item_id in enumerate(item_ids):
            kind = "purchase" if position % 2 else "view"
            EventFactory(user_id=user, item_id=item_id, type=kind, occurred_at=now - timedelta(days=position + 1))
    # Not interactions: a skip (weight 0) and views older than the 90-day window.
    for user in ("u1", "u2"):
        EventFactory(user_id=user, item_id="t", type="skip", occurred_at=now - timedelta(days=1))
    for user in ("u3", "u4"):
        EventFactory(user_id=user, item_id="t", type="view", occurred_at=now - timedelta(days=100))
    return items


def test_co_occurrence_is_a_cosine_so_popular_items_do_not_dominate(shop_with_history):
    report = neighbourhoods_refresh()

    # Raw counts would put z first (4 shared users with p, against 2 for r and q); s shares 1 user: noise.
    assert _stored("p") == [
        ("r", 0.707107, "co-occurrence", "co-occurrence", "Paper owl"),  # 2 / sqrt(4 * 2)
        ("z", 0.632456, "co-occurrence", "co-occurrence", "Paper owl"),  # 4 / sqrt(4 * 10)
        ("s", 0.613147, "entity", "theme:owl", "Owl"),
        ("q", 0.57735, "co-occurrence", "co-occurrence", "Paper owl"),  # 2 / sqrt(4 * 3)
    ]
    # Both kinds of evidence add up; the larger one (blue, 0.613 > 3 / sqrt(3 * 10)) names the reason.
    assert _stored("q") == [
        ("z", 1.16087, "entity", "colour:blue", "Blue"),
        ("p", 0.57735, "co-occurrence", "co-occurrence", "Blue mug"),
    ]
    assert [row[:2] for row in _stored("z")] == [("q", 1.16087), ("p", 0.632456), ("r", 0.447214), ("s", 0.447214)]
    assert _stored("t") == []
    assert (report.items, report.items_with_neighbours, report.users) == (6, 5, 10)
    assert (report.entity_neighbours, report.co_occurrence_neighbours) == (4, 10)


def test_the_co_occurrence_window_is_configurable(shop_with_history):
    neighbourhoods_refresh(window_days=3)  # each user's first two items: p {u1 u2 u3 u5}, q {u1 u2 u4}, z {u6 ..}

    assert _stored("p") == [
        ("s", 0.613147, "entity", "theme:owl", "Owl"),
        ("q", 0.57735, "co-occurrence", "co-occurrence", "Paper owl"),
    ]
    assert _stored("z") == [("q", 0.613147, "entity", "colour:blue", "Blue")]


def test_explanations_name_the_entity_or_the_item():
    liked = Neighbour("b", 0.6, "entity", "theme:retrospot", "Retrospot")
    unnamed = Neighbour("b", 0.6, "entity", "brand:acme", "")
    together = Neighbour("r", 0.7, "co-occurrence", "co-occurrence", "Paper owl")

    assert neighbour_explanation(liked) == "Because you like Retrospot"
    assert neighbour_explanation(unnamed) == "Because you like acme"
    assert neighbour_explanation(together) == "Often bought with Paper owl"


def test_refresh_is_idempotent_and_removes_stale_rows_and_keys(
    kitchen_catalog, clean_redis, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        neighbourhoods_refresh()
    first = list(ItemNeighbour.objects.values_list("item_id", "neighbour_id", "score", "source", "via"))
    with django_capture_on_commit_callbacks(execute=True):
        neighbourhoods_refresh()
    assert list(ItemNeighbour.objects.values_list("item_id", "neighbour_id", "score", "source", "via")) == first
    assert clean_redis.scard(redis_keys.ITEM_NEIGHBOURS_INDEX) == 8

    # The garden pair loses its only link, and f leaves the catalog.
    ItemEntity.objects.filter(entity__external_id="garden").delete()
    Item.objects.filter(external_id="f").delete()
    with django_capture_on_commit_callbacks(execute=True):
        neighbourhoods_refresh()

    assert ItemNeighbour.objects.filter(item_id__in=["f", "g", "h"]).count() == 0
    assert ItemNeighbour.objects.filter(neighbour_id="f").count() == 0
    assert ItemNeighbour.objects.count() == 5 * 4
    assert {member.decode() for member in clean_redis.smembers(redis_keys.ITEM_NEIGHBOURS_INDEX)} == set("abcde")
    assert clean_redis.exists(*(redis_keys.item_neighbours(item_id) for item_id in "fgh")) == 0


def test_published_neighbourhoods_read_back_in_one_round_trip(
    shop_with_history, clean_redis, django_capture_on_commit_callbacks, django_assert_num_queries
):
    with django_capture_on_commit_callbacks(execute=True):
        neighbourhoods_refresh()

    with django_assert_num_queries(0):
        read = item_neighbours(["p", "t", "unknown"])

    assert read["t"] == read["unknown"] == []
    assert read["p"] == [
        Neighbour("r", 0.707107, "co-occurrence", "co-occurrence", "Paper owl"),
        Neighbour("z", 0.632456, "co-occurrence", "co-occurrence", "Paper owl"),
        Neighbour("s", 0.613147, "entity", "theme:owl", "Owl"),
        Neighbour("q", 0.57735, "co-occurrence", "co-occurrence", "Paper owl"),
    ]
    assert [neighbour_explanation(neighbour) for neighbour in read["p"][1:3]] == [
        "Often bought with Paper owl",
        "Because you like Owl",
    ]
    # The key is hash-tagged by its item and holds the compact encoding (the title once).
    payload = clean_redis.get("neighbours:{s}")
    assert orjson.loads(payload) == ["Owl cushion", [["p", 0.613147, "e", "theme:owl", "Owl"], ["z", 0.447214, "c"]]]


def test_reads_share_the_callers_pipeline(shop_with_history, clean_redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        neighbourhoods_refresh()
    clean_redis.set("other", "1")
    pipeline = clean_redis.pipeline(transaction=False)
    pipeline.get("other")

    count = neighbours_queue(pipeline, ["q", "t"])
    replies = pipeline.execute()

    assert count == 2
    assert replies[0] == b"1"
    assert neighbours_decode(replies[1:], item_ids=["q", "t"]) == {
        "q": [
            Neighbour("z", 1.16087, "entity", "colour:blue", "Blue"),
            Neighbour("p", 0.57735, "co-occurrence", "co-occurrence", "Blue mug"),
        ],
        "t": [],
    }


def test_an_empty_catalog_refreshes_to_nothing(clean_redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        report = neighbourhoods_refresh()

    assert (report.items, report.neighbours) == (0, 0)
    assert clean_redis.scard(redis_keys.ITEM_NEIGHBOURS_INDEX) == 0


def test_task_refreshes_and_is_scheduled_hourly(kitchen_catalog, clean_redis, django_capture_on_commit_callbacks):
    assert ("Refresh item neighbourhoods", "graph.neighbourhoods_refresh", 60) in DEFAULT_SCHEDULES

    with django_capture_on_commit_callbacks(execute=True):
        result = neighbourhoods_refresh_task.apply().get()

    assert (result["items"], result["neighbours"]) == (8, 32)
    assert item_neighbours(["g"])["g"] == [Neighbour("h", 0.666667, "entity", "category:garden", "Garden")]


def _big_catalog(seed: int):
    """600 items, each linked to one of 4 brands (one has most items) with uniform weight, some also to one of 30
    collections with varied weights; a user x item matrix with co-occurrence."""
    import math

    import numpy as np
    from scipy import sparse

    from graph_app.neighbourhoods import _Catalog

    generator = np.random.default_rng(seed)
    items, entities = 600, 34
    brand = np.minimum(generator.zipf(1.5, items) - 1, 3)
    rows, columns, weights = list(range(items)), brand.tolist(), [1.0] * items
    for item in np.flatnonzero(generator.random(items) < 0.3).tolist():
        rows.append(item)
        columns.append(4 + int(generator.integers(0, 30)))
        weights.append(float(generator.choice([0.5, 1.0, 2.0])))
    links = sparse.csr_matrix((weights, (rows, columns)), shape=(items, entities))
    links.sort_indices()
    linked = np.diff(links.tocsc().indptr).astype(np.float64)
    idf = np.where(linked > 0, np.log(items / np.maximum(linked, 1)) / math.log(items), 0.0)
    catalog = _Catalog(
        [f"i{index:04d}" for index in range(items)], [""] * items, [f"e:{index}" for index in range(entities)],
        [""] * entities, links, idf,
    )  # fmt: skip
    users = 300
    pairs = {(int(generator.integers(0, users)), int(generator.integers(0, items))) for _ in range(4000)}
    user_items = sparse.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), ([user for user, _ in pairs], [item for _, item in pairs])),
        shape=(users, items),
    )
    return catalog, user_items.T.tocsr(), users


def test_an_entity_with_many_items_gives_candidates_from_its_strongest_members_with_the_same_result(monkeypatch):
    import numpy as np

    from graph_app import neighbourhoods

    catalog, item_users, users = _big_catalog(4)
    exact = neighbourhoods.neighbourhoods_compute(catalog=catalog, item_users=item_users, users=users, k=5)
    # Only the brands (uniform weights, one an item) have more members than this: the collections are not cut.
    monkeypatch.setattr(neighbourhoods, "ENTITY_CANDIDATES_MAX", 40)

    capped = neighbourhoods.neighbourhoods_compute(catalog=catalog, item_users=item_users, users=users, k=5)

    assert np.diff(catalog.links.tocsc().indptr).max() > 100  # the cap applied
    assert (capped.offsets == exact.offsets).all()
    assert (capped.neighbours == exact.neighbours).all()
    np.testing.assert_allclose(capped.scores, exact.scores, atol=2e-6)
    assert (capped.via_entity == exact.via_entity).all()
