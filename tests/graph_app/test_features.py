"""The feature store: one definition, two materializations, identical math."""

from __future__ import annotations

import csv
import gzip
import math
import struct
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.core.management import call_command

from graph_app.features.definitions import FEATURE_INDEX, FEATURE_NAMES
from graph_app.features.offline import FeatureRequest, features_offline
from graph_app.features.online import catalog_facts_forget, catalog_stock_kept, features_fetch
from graph_app.features.skew import feature_skew_check
from operations.demo import DEMO_SAMPLE, demo_data_load
from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.consumer import events_drain_all
from signals_app.services import events_ingest
from surface_app.serving.slates import slate_serve

pytestmark = pytest.mark.django_db


def _both(
    user: str, items: list[str], placement: str = "home"
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    while events_drain_all().read:
        pass
    now = time.time()
    online = features_fetch(user_key=user, item_ids=items, placement=placement, now=now).values
    as_of = datetime.fromtimestamp(now, tz=UTC)
    offline = features_offline(requests=[FeatureRequest(user, item, placement, as_of) for item in items])
    return (
        {name: list(online[:, FEATURE_INDEX[name]]) for name in FEATURE_NAMES},
        {name: list(offline[:, FEATURE_INDEX[name]]) for name in FEATURE_NAMES},
    )


@pytest.fixture
def catalog(api_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        for item_id, category, brand in [
            ("mug", "kitchen", "acme"),
            ("bowl", "kitchen", "other"),
            ("rake", "garden", "acme"),
        ]:
            api_client.put(
                f"/api/v1/items/{item_id}",
                {"title": item_id, "category": category, "price": "5.00", "entities": [{"kind": "brand", "id": brand}]},
                format="json",
            )


def test_decayed_values_match_the_definitions_online_and_offline(catalog):
    day_ago = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    events_ingest(
        raw_events=[{"event_id": "p1", "type": "purchase", "user_id": "u1", "item_id": "mug", "timestamp": day_ago}]
    )

    online, offline = _both("u1", ["mug", "bowl", "rake"])

    for values in (online, offline):
        # purchase weight 8, one day old: 7-day half-life for the user, windows of 1 h / 1 d / 7 d for the item.
        assert values["user_category_frequency"][:2] == pytest.approx([8 * 2 ** (-1 / 7)] * 2, rel=1e-4)
        assert values["user_category_frequency"][2] == 0.0  # garden: never engaged
        assert values["user_category_recency_days"][0] == pytest.approx(1.0, rel=1e-3)
        assert math.isnan(values["user_category_recency_days"][2])
        assert values["user_item_entity_affinity"] == pytest.approx(
            [8 * 2 ** (-1 / 7), 0.0, 8 * 2 ** (-1 / 7)], rel=1e-4
        )
        assert values["item_popularity_1d"] == pytest.approx([4.0, 0.0, 0.0], rel=1e-4)
        assert values["item_popularity_7d"][0] == pytest.approx(8 * 2 ** (-1 / 7), rel=1e-4)
        assert values["item_popularity_1h"][0] == pytest.approx(8 * 2.0**-24, rel=1e-3)
        assert values["item_price"] == [5.0, 5.0, 5.0]
        assert values["item_in_stock"] == [1.0, 1.0, 1.0]
        assert values["item_placement_ctr"] == pytest.approx([0.05] * 3)
    assert online["user_item_similarity"] == pytest.approx(offline["user_item_similarity"], rel=1e-6)


def test_item_counters_add_events_in_any_order_into_one_packed_record(catalog):
    now = datetime.now(UTC)
    # The 30 h and 5 h old purchases arrive after the 2 h old one: they add their decayed amounts to the record.
    times = [now - timedelta(hours=hours) for hours in (2, 30, 5)]
    events_ingest(
        raw_events=[
            {"event_id": f"late-{index}", "type": "purchase", "user_id": "u3", "item_id": "bowl",
             "timestamp": occurred.isoformat()}
            for index, occurred in enumerate(times)
        ]
    )  # fmt: skip

    online, offline = _both("u3", ["bowl"])

    for window, half_life in (("1h", 3600.0), ("1d", 86400.0), ("7d", 7 * 86400.0)):
        expected = sum(8 * 2 ** (-(now - occurred).total_seconds() / half_life) for occurred in times)
        assert online[f"item_popularity_{window}"][0] == pytest.approx(expected, rel=1e-3), window
        assert offline[f"item_popularity_{window}"][0] == pytest.approx(online[f"item_popularity_{window}"][0])
    # One record of four doubles (three windows, then the latest event's time) read by one HMGET for any item.
    record = get_redis().hget(redis_keys.item_counters(redis_keys.partition_of("u3")), "bowl")
    assert len(record) == 32
    assert struct.unpack("<4d", record)[3] == pytest.approx(times[0].timestamp())


def test_a_late_event_counts_online_once_logged_and_offline_alike(catalog):
    # Arrived three days after it happened (past the 48 h dedupe window): the online path applies it once the log
    # stored it, and the offline materialization counts it too (one rule for both).
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    events_ingest(
        raw_events=[
            {"event_id": "late", "type": "purchase", "user_id": "u4", "item_id": "mug", "timestamp": three_days_ago}
        ]
    )

    online, offline = _both("u4", ["mug", "bowl", "rake"])

    for values in (online, offline):
        assert values["user_category_frequency"][:2] == pytest.approx([8 * 2 ** (-3 / 7)] * 2, rel=1e-4)
        assert values["user_category_recency_days"][0] == pytest.approx(3.0, rel=1e-3)
        assert values["item_popularity_7d"][0] == pytest.approx(8 * 2 ** (-3 / 7), rel=1e-4)
        assert values["item_popularity_1d"][0] == pytest.approx(8 * 2**-3, rel=1e-4)
    for name in online:
        assert online[name] == pytest.approx(offline[name], rel=1e-6, abs=1e-9, nan_ok=True), name


def test_values_older_than_their_ttl_are_missing_on_both_sides(catalog):
    long_ago = (datetime.now(UTC) - timedelta(days=120)).isoformat()
    events_ingest(
        raw_events=[{"event_id": "old", "type": "purchase", "user_id": "u1", "item_id": "mug", "timestamp": long_ago}],
        backfill=True,
    )

    online, offline = _both("u1", ["mug"])

    for values in (online, offline):
        assert math.isnan(values["user_category_frequency"][0])
        assert math.isnan(values["user_item_similarity"][0])
        assert math.isnan(values["item_popularity_7d"][0])  # the item's last event is older than 90 days
        assert math.isnan(values["item_popularity_1h"][0])


def test_each_features_age_is_a_metric_labelled_with_the_feature(catalog, api_client, settings):
    from prometheus_client import REGISTRY

    settings.FEATURE_AGE_SAMPLE_EVERY = 1  # every read observes

    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    events_ingest(
        raw_events=[{"event_id": "a1", "type": "purchase", "user_id": "u1", "item_id": "mug", "timestamp": hour_ago}]
    )
    aged = (
        "item_popularity_1h", "item_popularity_1d", "item_popularity_7d", "item_trend", "user_category_frequency",
        "user_category_recency_days", "user_item_entity_affinity", "user_item_similarity",
    )  # fmt: skip

    def samples(suffix: str) -> dict[str, float]:
        return {
            name: REGISTRY.get_sample_value(f"feature_age_seconds_{suffix}", {"feature": name}) or 0.0 for name in aged
        }

    counts, sums = samples("count"), samples("sum")
    features_fetch(user_key="u1", item_ids=["mug", "bowl"], placement="home", now=time.time())

    for name in aged:  # one observation each: the age of the purchase an hour ago
        assert samples("count")[name] == counts[name] + 1, name
        assert samples("sum")[name] - sums[name] == pytest.approx(3600, abs=60), name
    exposed = api_client.get("/metrics").content.decode()
    for name in aged:
        assert f'feature_age_seconds_count{{feature="{name}"}}' in exposed


def test_click_through_rate_counts_served_impressions_and_attributed_clicks(catalog):
    events_ingest(raw_events=[{"event_id": "v", "type": "view", "user_id": "u2", "item_id": "rake"}])
    slates = [slate_serve(user_key="u2", placement="home", k=3) for _ in range(4)]
    served = slates[0].items[0].item_id
    events_ingest(
        raw_events=[
            {"event_id": "c1", "type": "click", "user_id": "u2", "item_id": served, "placement": "home",
             "request_id": slates[0].request_id}
        ]
    )  # fmt: skip

    online, offline = _both("u2", [served])

    assert online["item_placement_ctr"][0] == pytest.approx((1 + 1) / (4 + 20), rel=1e-4)
    assert offline["item_placement_ctr"][0] == pytest.approx(online["item_placement_ctr"][0], rel=1e-6)


def test_skew_check_finds_no_difference_on_demo_data(tmp_path, django_capture_on_commit_callbacks, capsys):
    with gzip.open(DEMO_SAMPLE, "rt", encoding="utf-8", newline="") as source:
        lines = source.readlines()[:1500]
    sample = tmp_path / "sample.csv.gz"
    with gzip.open(sample, "wt", encoding="utf-8", newline="") as target:
        target.writelines(lines)
    assert len(list(csv.reader(lines))) == 1500
    with django_capture_on_commit_callbacks(execute=True):
        demo_data_load(sample=sample)
    user = "customer-" + lines[1].split(",")[6].split(".")[0]
    for _ in range(3):
        slate = slate_serve(user_key=user, placement="default", k=5)
    events_ingest(
        raw_events=[{"event_id": "demo-click", "type": "click", "user_id": user, "item_id": slate.items[0].item_id,
                     "placement": "default", "request_id": slate.request_id}]
    )  # fmt: skip
    while events_drain_all().read:
        pass

    report = feature_skew_check(users=15, items_per_user=16)

    assert report.rows == 15 * 16
    assert report.mismatched == 0, {name: skew.examples for name, skew in report.features.items() if skew.mismatched}
    assert report.features["user_item_similarity"].max_difference < 1e-6

    from scoring_app.skew import retrieval_skew_check

    retrieval = retrieval_skew_check(users=15)
    assert retrieval.users > 5 and retrieval.rows > 100
    assert retrieval.mismatched == 0, {n: skew.examples for n, skew in retrieval.features.items() if skew.mismatched}
    assert retrieval.features["retrieval_user_vector_score"].compared == retrieval.rows

    call_command("feature_skew_check", "--users", "5")
    output = capsys.readouterr().out
    assert "MISMATCHED" not in output and "retrieval_similar_share" in output


def test_impressions_become_training_rows_with_point_in_time_features_and_labels(catalog):
    from graph_app.features.materialize import features_materialize
    from graph_app.models import FeatureRow

    events_ingest(raw_events=[{"event_id": "v1", "type": "view", "user_id": "u3", "item_id": "mug"}])
    slate = slate_serve(user_key="u3", placement="home", k=2)
    clicked_item = slate.items[0].item_id
    events_ingest(
        raw_events=[
            {"event_id": "c", "type": "click", "user_id": "u3", "item_id": clicked_item, "placement": "home",
             "request_id": slate.request_id},
            {"event_id": "later", "type": "purchase", "user_id": "u3", "item_id": "rake"},
        ]
    )  # fmt: skip
    while events_drain_all().read:
        pass

    assert features_materialize().rows == 0  # the label window has not closed yet
    report = features_materialize(label_window=timedelta(0))
    again = features_materialize(label_window=timedelta(0))

    assert (report.rows, report.clicked, again.rows) == (2, 1, 0)
    rows = {row.item_id: row for row in FeatureRow.objects.all()}
    assert rows[clicked_item].clicked and not rows[slate.items[1].item_id].clicked
    assert rows[clicked_item].feature_names == list(FEATURE_NAMES)
    # Point in time: the purchase of "rake" after serving is not in the features of the served slate.
    popularity_7d = FEATURE_NAMES.index("item_popularity_7d")
    assert set(rows) == {"bowl", "rake"}  # the two items the user had not seen
    assert rows["rake"].features[popularity_7d] == 0.0
    served_at = rows[clicked_item].served_at
    expected = features_offline(requests=[FeatureRequest("u3", clicked_item, "home", served_at)])[0]
    assert rows[clicked_item].features == [None if math.isnan(value) else value for value in expected]


def test_the_callers_recent_items_save_a_round_trip_without_changing_a_value(catalog):
    events_ingest(
        raw_events=[
            {"event_id": f"r{n}", "type": "view", "user_id": "u5", "item_id": item}
            for n, item in enumerate(["mug", "rake"])
        ]
    )
    now = time.time()
    items = ["mug", "bowl", "rake"]
    plain = features_fetch(user_key="u5", item_ids=items, placement="home", now=now).values

    for known in (["rake", "mug"], ["mug"], ["bowl", "rake", "mug"]):  # as read, shorter and outdated: same values
        given = features_fetch(user_key="u5", item_ids=items, placement="home", now=now, recent_items=known).values
        assert given.ravel().tolist() == pytest.approx(plain.ravel().tolist(), nan_ok=True)
    assert not math.isnan(plain[1, FEATURE_INDEX["user_item_similarity"]])


def test_item_counters_rebuilt_from_the_log_serve_the_same_features(catalog):
    day_ago = (datetime.now(UTC) - timedelta(hours=20)).isoformat()
    events_ingest(
        raw_events=[
            {"event_id": "b1", "type": "purchase", "user_id": "u6", "item_id": "mug", "timestamp": day_ago},
            {"event_id": "b2", "type": "view", "user_id": "u7", "item_id": "mug"},
            {"event_id": "b3", "type": "add_to_cart", "user_id": "u6", "item_id": "rake"},
        ]
    )
    slate = slate_serve(user_key="u6", placement="home", k=3)
    events_ingest(
        raw_events=[
            {"event_id": "b4", "type": "click", "user_id": "u6", "item_id": slate.items[0].item_id,
             "placement": "home", "request_id": slate.request_id}
        ]
    )  # fmt: skip
    while events_drain_all().read:
        pass
    items = ["mug", "bowl", "rake"]
    now = time.time()
    before = features_fetch(user_key="u6", item_ids=items, placement="home", now=now).values
    client = get_redis()
    for partition in redis_keys.partitions():
        client.delete(redis_keys.item_counters(partition), redis_keys.placement_counters(partition, "home"))
    emptied = features_fetch(user_key="u6", item_ids=items, placement="home", now=now).values
    assert emptied[0, FEATURE_INDEX["item_popularity_7d"]] == 0.0

    call_command("rebuild_item_counters")

    after = features_fetch(user_key="u6", item_ids=items, placement="home", now=now).values
    assert after.ravel().tolist() == pytest.approx(before.ravel().tolist(), rel=1e-6, nan_ok=True)
    assert after[0, FEATURE_INDEX["item_popularity_7d"]] > 0
    assert after[:, FEATURE_INDEX["item_placement_ctr"]].tolist() != [0.05] * 3  # impressions and the click


def test_catalog_facts_kept_in_process_follow_every_catalog_change(
    api_client, catalog, clean_redis, django_capture_on_commit_callbacks
):
    now = time.time()
    first = features_fetch(user_key="u8", item_ids=["mug", "bowl"], placement="home", now=now)
    kept = features_fetch(user_key="u8", item_ids=["mug", "bowl"], placement="home", now=now)
    assert kept.values.ravel().tolist() == pytest.approx(first.values.ravel().tolist(), nan_ok=True)
    assert first.column("item_in_stock").tolist() == [1.0, 1.0]

    with django_capture_on_commit_callbacks(execute=True):  # the catalog changes: the next read sees it
        api_client.put(
            "/api/v1/items/mug",
            {"title": "mug", "category": "garden", "price": "7.50", "in_stock": False, "entities": []},
            format="json",
        )
    changed = features_fetch(user_key="u8", item_ids=["mug", "bowl"], placement="home", now=now)

    assert changed.column("item_in_stock").tolist() == [0.0, 1.0]
    assert changed.column("item_price").tolist() == [7.5, 5.0]
    # What stock checks read: the items kept in stock, following the change too.
    kept_facts, kept_in_stock = catalog_stock_kept(clean_redis.get(redis_keys.CATALOG_VERSION))
    assert set(kept_facts) == {"mug", "bowl"} and kept_in_stock == {"bowl"}
    assert changed.entities[0] == b"category:garden"
    # Some facts kept, some read (in any order): the same values as read fresh from Redis with nothing kept.
    mixed = features_fetch(user_key="u8", item_ids=["rake", "mug", "bowl"], placement="home", now=now)
    catalog_facts_forget()
    fresh = features_fetch(user_key="u8", item_ids=["rake", "mug", "bowl"], placement="home", now=now)
    assert mixed.values.ravel().tolist() == pytest.approx(fresh.values.ravel().tolist(), nan_ok=True)
    assert mixed.entities == fresh.entities
    assert fresh.values[1:].ravel().tolist() == pytest.approx(changed.values.ravel().tolist(), nan_ok=True)


def test_kept_catalog_facts_past_their_limit_keep_the_newer_half_and_give_the_values_read_fresh(
    catalog, settings, clean_redis
):
    from graph_app.features import online

    events_ingest(raw_events=[{"event_id": "k1", "type": "purchase", "user_id": "u9", "item_id": "mug"}])
    # An item with more entities than the others (wider rows) and one whose embedding has another size.
    clean_redis.hset(
        redis_keys.catalog_entities(redis_keys.partition_of("u9")), "bowl", b"category:kitchen|brand:acme|theme:tea"
    )
    vectors = {"mug": np.ones(64), "bowl": np.arange(64.0), "rake": np.ones(8)}
    clean_redis.hset(
        redis_keys.CATALOG_VECTORS, mapping={k: v.astype(np.float32).tobytes() for k, v in vectors.items()}
    )
    settings.FEATURE_CATALOG_CACHE_ITEMS = 2
    now = time.time()
    for items in (["mug", "bowl"], ["rake"], ["bowl", "rake"], ["rake", "mug", "bowl", "mug"]):
        kept = features_fetch(user_key="u9", item_ids=items, placement="home", now=now)
        assert len(online._catalog_facts.facts) <= 3  # the limit, plus what one request read beyond it
        assert online._catalog_facts.in_stock <= set(online._catalog_facts.facts)  # evicted with their facts

    settings.FEATURE_CATALOG_CACHE_ITEMS = 0
    fresh = features_fetch(user_key="u9", item_ids=["rake", "mug", "bowl", "mug"], placement="home", now=now)
    assert kept.values.ravel().tolist() == pytest.approx(fresh.values.ravel().tolist(), nan_ok=True)
    assert kept.entities == fresh.entities
    assert kept.values[2, FEATURE_INDEX["user_item_entity_affinity"]] > 0  # acme, in the widest row
    similarity = fresh.values[:, FEATURE_INDEX["user_item_similarity"]]
    assert np.isnan(similarity[0])  # an embedding of another size: missing
    assert similarity[1] == pytest.approx(1.0) and 0 < similarity[2] < 1


def test_a_catalog_change_drops_only_the_changed_items_facts_kept(catalog):
    from graph_app import online as catalog_copy
    from graph_app.features import online

    now = time.time()
    features_fetch(user_key="u10", item_ids=["mug", "bowl", "rake"], placement="home", now=now)
    bowl = online._catalog_facts.facts["bowl"]

    catalog_copy.catalog_items_publish(
        static={"mug": catalog_copy.pack_static(price=9.0, in_stock=False, created_at=now)}, vectors={}
    )
    changed = features_fetch(user_key="u10", item_ids=["mug", "bowl", "rake"], placement="home", now=now)

    assert changed.column("item_in_stock").tolist() == [0.0, 1.0, 1.0]
    assert changed.column("item_price").tolist() == [9.0, 5.0, 5.0]
    assert online._catalog_facts.facts["bowl"] is bowl  # kept across the change, not read again
    # A rebuild may change anything: everything is read again.
    catalog_copy.catalog_version_bump()
    features_fetch(user_key="u10", item_ids=["bowl"], placement="home", now=now)
    assert online._catalog_facts.facts["bowl"] is not bowl
    assert set(online._catalog_facts.facts) == {"bowl"}


def test_catalog_changes_since_a_version_are_told_only_when_the_list_covers_them():
    from graph_app.online import catalog_changes_since

    entries = [b"v1\x1ea\x1fb", b"v2\x1ec", b"v3\x1e*", b"v4\x1ed"]

    assert catalog_changes_since(entries, b"v3", b"v4") == {"d"}
    assert catalog_changes_since(entries, b"v2", b"v4") is None  # v3 may have changed anything
    assert catalog_changes_since(entries, b"v0", b"v2") is None  # v0 is no longer listed
    assert catalog_changes_since(entries, b"v2", b"v9") is None  # v9 not listed yet
    assert catalog_changes_since(entries, b"v4", b"v4") == set()
    # Two writers pushed their changes (v2, then v3) and set the version in the other order: v2 is what readers
    # see last, so v3's change, listed after it, must count too.
    racing = [b"v1\x1ea", b"v2\x1eb", b"v3\x1ec"]
    assert catalog_changes_since(racing, b"v1", b"v2") == {"b", "c"}


def test_one_feature_read_in_the_sample_rate_observes_the_ages(catalog, settings):
    from prometheus_client import REGISTRY

    settings.FEATURE_AGE_SAMPLE_EVERY = 4
    events_ingest(raw_events=[{"event_id": "s1", "type": "view", "user_id": "u1", "item_id": "mug"}])

    def observed() -> float:
        return REGISTRY.get_sample_value("feature_age_seconds_count", {"feature": "item_popularity_1h"}) or 0.0

    before = observed()
    for _ in range(8):
        features_fetch(user_key="u1", item_ids=["mug"], placement="home", now=time.time())

    assert observed() - before == 2


def _facts(in_stock: bool, vector: np.ndarray | None, entities: bytes | None) -> tuple[object, object, object]:
    from graph_app import online as catalog_copy

    static = catalog_copy.pack_static(price=5.0, in_stock=in_stock, created_at=1.0e9)
    return static, None if vector is None else vector.astype(np.float32).tobytes(), entities


def test_the_catalog_table_appends_rows_and_readers_keep_the_rows_they_looked_up():
    from graph_app.features import online

    table = online._CatalogTable()
    table.append({
        "mug": _facts(True, np.ones(64), b"category:kitchen|brand:acme"),
        "bowl": _facts(False, np.arange(64.0), b"category:kitchen|brand:acme|theme:tea"),
        "rake": _facts(True, np.ones(8), None),  # an embedding of another size, no entities
    })  # fmt: skip
    rows = table.lookup(["bowl", "spade", "mug"])
    assert rows.tolist() == [1, -1, 0]

    table.append({"mug": _facts(False, np.full(64, 2.0), b"category:garden")})  # the mug changed: a new row
    assert table.lookup(["mug"]).tolist() == [3] and table.dead == 1
    old = table.gather(np.array([0, 1]))  # a reader that looked the mug up before the change
    new = table.gather(table.lookup(["mug", "bowl", "rake"]))
    assert old.static["in_stock"].tolist() == [1, 0] and new.static["in_stock"].tolist() == [0, 0, 1]
    assert new.entities == [b"category:garden", b"category:kitchen|brand:acme|theme:tea", None]
    numbers = online._entity_numbers
    assert new.categories.tolist() == [numbers[b"category:garden"], numbers[b"category:kitchen"], online.NO_ENTITY]
    assert new.lengths.tolist() == [0, 2, 0]
    assert new.others.tolist() == [numbers[b"brand:acme"], numbers[b"theme:tea"]]
    rows_with, vectors, norms = new.embeddings(64 * 4)
    assert rows_with.tolist() == [0, 1] and vectors[0].tolist() == [2.0] * 64
    assert norms.tolist() == pytest.approx([16.0, float(np.linalg.norm(np.arange(64.0)))])
    rows_with, vectors, _ = new.embeddings(8 * 4)  # another size: from the payloads as read
    assert rows_with.tolist() == [2] and vectors.tolist() == [[1.0] * 8]

    table.forget({"bowl"})
    assert table.lookup(["bowl"]).tolist() == [-1] and table.dead == 2
    table.append({f"item{number}": _facts(True, np.ones(64), b"brand:acme") for number in range(3000)})  # grows
    assert table.capacity >= 3004 and table.gather(np.array([0])).static["in_stock"].tolist() == [1]
    assert table.gather(table.lookup(["item2999"])).others.tolist() == [numbers[b"brand:acme"]]


def test_kept_catalog_facts_rebuild_their_table_when_too_many_rows_are_left_behind(catalog, monkeypatch):
    from graph_app.features import online

    monkeypatch.setattr(online, "TABLE_DEAD_ROWS_REBUILD", 1)
    now = time.time()
    fresh = features_fetch(user_key="u11", item_ids=["mug", "bowl", "rake"], placement="home", now=now)
    version = get_redis().get(redis_keys.CATALOG_VERSION)
    for _ in range(3):  # the same facts kept again and again: rows left behind
        online._catalog_facts.keep(version, dict(online._catalog_facts.facts))
    table = online._catalog_facts.table
    assert table.dead <= max(1, len(table.row_of)) and table.size <= 2 * len(table.row_of)
    kept = features_fetch(user_key="u11", item_ids=["mug", "bowl", "rake"], placement="home", now=now)
    assert kept.values.ravel().tolist() == pytest.approx(fresh.values.ravel().tolist(), nan_ok=True)
    assert kept.entities == fresh.entities
