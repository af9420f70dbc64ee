"""The user's affinity hash: one packed field an entity, named by its code, a cap on the entities kept that the
offline materialization applies alike, and hashes of the older layouts still served and converted on their user's
next event."""

from __future__ import annotations

import math
import struct
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from graph_app.features import user_affinity
from graph_app.features.definitions import AFFINITY_HALF_LIFE_SECONDS, FEATURE_INDEX
from graph_app.features.offline import FeatureRequest, features_offline
from graph_app.features.online import features_fetch
from graph_app.features.user_affinity import affinity_decode, entity_code, weakest_dropped
from personalization import redis_keys
from signals_app.consumer import events_drain_all
from signals_app.services import events_ingest

pytestmark = pytest.mark.django_db
USER_FEATURES = ("user_category_frequency", "user_category_recency_days", "user_item_entity_affinity")
META_FIELDS = {b"#m"}


def _fields(*keys: str) -> set[bytes]:
    return META_FIELDS | {entity_code(key) for key in keys}


@pytest.fixture
def shop(api_client, django_capture_on_commit_callbacks):
    """i0 and i2 in garden, i1 in kitchen; each item with a brand and a tag of its own."""
    with django_capture_on_commit_callbacks(execute=True):
        for number, category in enumerate(["garden", "kitchen", "garden"]):
            api_client.put(
                f"/api/v1/items/i{number}",
                {
                    "title": f"i{number}",
                    "category": category,
                    "entities": [{"kind": "brand", "id": f"b{number}"}, {"kind": "tag", "id": f"t{number}"}],
                },
                format="json",
            )


def _event(event_id: str, kind: str, item: str, hours_ago: float, user: str = "u1") -> dict[str, str]:
    """Within the dedupe window: applied as it arrives."""
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    return {"event_id": event_id, "type": kind, "user_id": user, "item_id": item, "timestamp": at.isoformat()}


def _user_features(user: str, items: list[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    while events_drain_all().read:
        pass
    now = time.time()
    online = features_fetch(user_key=user, item_ids=items, placement="home", now=now).values
    as_of = datetime.fromtimestamp(now, tz=UTC)
    offline = features_offline(requests=[FeatureRequest(user, item, "home", as_of) for item in items])
    return (
        {name: list(online[:, FEATURE_INDEX[name]]) for name in USER_FEATURES},
        {name: list(offline[:, FEATURE_INDEX[name]]) for name in USER_FEATURES},
    )


def test_past_the_cap_the_weakest_entities_go_online_and_offline_alike(shop, clean_redis, settings):
    settings.SIGNALS_AFFINITY_ENTITIES_KEPT = 4
    events_ingest(raw_events=[_event("e1", "purchase", "i0", 42)])  # garden, b0, t0: 8 each
    events_ingest(raw_events=[_event("e2", "view", "i1", 28)])  # kitchen, b1, t1: 1 each, the weakest: all go
    events_ingest(raw_events=[_event("e3", "view", "i2", 14)])  # garden +1; b2, t2: 1 each, the weakest: both go

    raw = clean_redis.hgetall(redis_keys.user_affinity("u1"))
    assert set(raw) == _fields("category:garden", "brand:b0", "tag:t0")
    affinity = affinity_decode(raw)
    now = time.time()
    factor = affinity.factor(now)
    decayed = {name.decode(): value * factor for name, value in affinity.counters.items()}
    old, recent = 8 * 2 ** (-42 / 168), 2 ** (-14 / 168)  # a 7-day half-life is 168 hours
    assert decayed == {
        "category:garden": pytest.approx(old + recent, rel=1e-4),
        "brand:b0": pytest.approx(old, rel=1e-4),
        "tag:t0": pytest.approx(old, rel=1e-4),
    }
    online, offline = _user_features("u1", ["i0", "i1", "i2"])
    for name in USER_FEATURES:
        # Online counters are stored as floats (7 significant digits).
        assert online[name] == pytest.approx(offline[name], rel=1e-6, nan_ok=True), name
    assert online["user_category_frequency"][1] == 0.0 and math.isnan(online["user_category_recency_days"][1])
    assert online["user_item_entity_affinity"] == pytest.approx([2 * old, 0.0, 0.0], rel=1e-4)
    assert online["user_category_recency_days"][0] == pytest.approx(14 / 24, rel=1e-3)

    # The rebuild from the log replays the same cap.
    clean_redis.flushdb()
    call_command("rebuild_online_state", "--users-only", stdout=StringIO())
    rebuilt = affinity_decode(clean_redis.hgetall(redis_keys.user_affinity("u1")))
    assert (rebuilt.epoch, rebuilt.last) == pytest.approx((affinity.epoch, affinity.last))
    assert rebuilt.counters == pytest.approx(affinity.counters, rel=1e-12)
    assert rebuilt.category_times == pytest.approx(affinity.category_times)


def test_ties_at_the_weakest_go_together_whatever_their_order():
    counters = {"a": 1.0, "b": 3.0, "c": 1.0, "d": 2.0}
    assert sorted(weakest_dropped(counters, 3)) == ["a", "c"]
    assert counters == {"b": 3.0, "d": 2.0}
    assert weakest_dropped(counters, 2) == [] and counters == {"b": 3.0, "d": 2.0}


def test_a_hash_of_the_first_layout_serves_the_same_values_and_converts_on_the_next_event(shop, clean_redis):
    now = time.time()
    day_ago = now - 86400
    key = redis_keys.user_affinity("u2")
    clean_redis.hset(
        key,
        mapping={
            "_epoch": repr(day_ago), "_last": repr(day_ago),
            "f:category:kitchen": "3.0", "r:category:kitchen": repr(day_ago),
            "f:brand:b1": "2.0", "r:brand:b1": repr(day_ago),
        },
    )  # fmt: skip
    clean_redis.expire(key, 3600)
    factor = 2 ** (-1 / 7)

    values = features_fetch(user_key="u2", item_ids=["i1", "i0"], placement="home", now=now)

    assert list(values.column("user_category_frequency")) == pytest.approx([3 * factor, 0.0], rel=1e-4)
    assert values.column("user_category_recency_days")[0] == pytest.approx(1.0, rel=1e-4)
    assert list(values.column("user_item_entity_affinity")) == pytest.approx([2 * factor, 0.0], rel=1e-4)
    assert values.affinity.strongest(categories=True, count=3) == ["kitchen"]

    events_ingest(raw_events=[_event("e9", "view", "i1", 0, user="u2")])

    raw = clean_redis.hgetall(key)
    assert set(raw) == _fields("category:kitchen", "brand:b1", "tag:t1")
    affinity = affinity_decode(raw)
    assert affinity.epoch == pytest.approx(day_ago)
    growth = 2 ** ((time.time() - day_ago) / AFFINITY_HALF_LIFE_SECONDS)  # a view now, against the old epoch
    assert affinity.counters[b"category:kitchen"] == pytest.approx(3.0 + growth, rel=1e-4)
    assert affinity.counters[b"brand:b1"] == pytest.approx(2.0 + growth, rel=1e-4)
    assert affinity.category_times[b"category:kitchen"] == pytest.approx(time.time(), abs=5)
    assert clean_redis.ttl(key) > 80 * 86400


def test_identify_adds_the_sessions_entities_then_applies_the_cap(shop, clean_redis, api_client, settings):
    settings.SIGNALS_AFFINITY_ENTITIES_KEPT = 4
    events_ingest(raw_events=[_event("u-1", "purchase", "i0", 20, user="carol")])  # garden, b0, t0: 8 each
    session_view = {**_event("s-1", "view", "i1", 10), "user_id": "", "session_id": "s-9"}
    events_ingest(raw_events=[session_view])  # kitchen, b1, t1: 1 each, weaker than the user's

    api_client.post("/api/v1/users/carol/identify", {"session_id": "s-9"}, format="json")

    raw = clean_redis.hgetall(redis_keys.user_affinity("carol"))
    assert set(raw) == _fields("category:garden", "brand:b0", "tag:t0")
    merged = affinity_decode(raw)
    assert merged.last == pytest.approx(time.time() - 36000, abs=5)  # the session's later event
    assert merged.recent_last == pytest.approx(time.time() - 36000, abs=5)  # and its later item of interest
    assert not clean_redis.exists(redis_keys.user_affinity("session:s-9"))


def test_the_epoch_moves_forward_after_100_half_lives_keeping_every_value(shop, clean_redis):
    from graph_app.state.ingest import ingest_script
    from signals_app.services import IngestReport, events_validate

    now = datetime.now(UTC)
    # A view every 80 days for 1,520 days (217 half-lives of 7 days), never a gap past the 90-day TTL.
    times = [now - timedelta(days=80 * step) for step in range(19, -1, -1)]
    raw = [
        {"event_id": f"r{number}", "type": "view", "user_id": "u3", "item_id": "i1", "timestamp": at.isoformat()}
        for number, at in enumerate(times)
    ]
    valid = events_validate(raw_events=raw, report=IngestReport(), now=now, backfill=True)
    ingest_script.run(clean_redis, valid.events)

    affinity = affinity_decode(clean_redis.hgetall(redis_keys.user_affinity("u3")))
    # Moved at the first event past 100 half-lives (700 days), twice: to times[9], then to times[18].
    assert affinity.epoch == pytest.approx(times[-2].timestamp())
    at = now.timestamp()
    expected = sum(2 ** (-(at - moment.timestamp()) / AFFINITY_HALF_LIFE_SECONDS) for moment in times)
    factor = affinity.factor(at)
    assert affinity.counters[b"category:kitchen"] * factor == pytest.approx(expected, rel=1e-6)  # floats
    assert affinity.counters[b"tag:t1"] * factor == pytest.approx(expected, rel=1e-6)
    assert affinity.category_times == {b"category:kitchen": pytest.approx(at)}


def test_a_hash_named_by_entity_keys_serves_the_same_values_and_is_coded_on_the_next_event(shop, clean_redis):
    """The layout before codes: fields named by entity key holding doubles, the latest item of interest in a key
    of its own."""
    now = time.time()
    day_ago = now - 86400
    key = redis_keys.user_affinity("u4")
    double = struct.Struct("<d")
    clean_redis.hset(
        key,
        mapping={
            "#e": double.pack(day_ago), "#l": double.pack(day_ago),
            "category:kitchen": struct.pack("<dd", 3.0, day_ago), "brand:b1": double.pack(2.0),
        },
    )  # fmt: skip
    clean_redis.expire(key, 3600)
    clean_redis.rpush(redis_keys.user_recent_items("u4"), "i1")
    clean_redis.set(redis_keys.user_recent_last("u4"), repr(day_ago))
    factor = 2 ** (-1 / 7)

    values = features_fetch(user_key="u4", item_ids=["i1", "i0"], placement="home", now=now)

    assert list(values.column("user_category_frequency")) == pytest.approx([3 * factor, 0.0], rel=1e-4)
    assert list(values.column("user_item_entity_affinity")) == pytest.approx([2 * factor, 0.0], rel=1e-4)
    assert values.recent_valid

    events_ingest(raw_events=[_event("e10", "view", "i1", 0, user="u4")])

    raw = clean_redis.hgetall(key)
    assert set(raw) == _fields("category:kitchen", "brand:b1", "tag:t1")
    assert not clean_redis.exists(redis_keys.user_recent_last("u4"))  # moved into "#r", then moved on
    affinity = affinity_decode(raw)
    growth = 2 ** ((time.time() - day_ago) / AFFINITY_HALF_LIFE_SECONDS)
    assert affinity.counters[b"category:kitchen"] == pytest.approx(3.0 + growth, rel=1e-4)
    assert affinity.counters[b"brand:b1"] == pytest.approx(2.0 + growth, rel=1e-4)
    assert affinity.category_times[b"category:kitchen"] == pytest.approx(time.time(), abs=5)
    assert affinity.recent_last == pytest.approx(time.time(), abs=5)
    assert clean_redis.ttl(key) > 80 * 86400


def test_codes_are_named_from_the_catalog_tables_when_redis_lost_the_names(shop, clean_redis, monkeypatch):
    events_ingest(raw_events=[_event("e11", "view", "i1", 1, user="u5")])
    clean_redis.delete(redis_keys.CATALOG_ENTITY_NAMES)
    monkeypatch.setattr(user_affinity, "_entity_names", {})
    monkeypatch.setattr(user_affinity, "_names_from_catalog_at", -user_affinity.NAMES_FROM_CATALOG_SECONDS)

    affinity = affinity_decode(clean_redis.hgetall(redis_keys.user_affinity("u5")))

    assert set(affinity.counters) == {b"category:kitchen", b"brand:b1", b"tag:t1"}
    assert affinity.strongest(categories=True, count=3) == ["kitchen"]
    assert clean_redis.hget(redis_keys.CATALOG_ENTITY_NAMES, entity_code("brand:b1")) == b"brand:b1"
