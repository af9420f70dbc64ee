"""History counts online: late events (applied once the log stored them), imports, and the rebuild from the log."""

from __future__ import annotations

import json
import logging
import struct
import time
from datetime import datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from graph_app.features.definitions import CTR_HALF_LIFE_SECONDS, POPULARITY_HALF_LIVES
from graph_app.features.user_affinity import affinity_decode
from graph_app.state.models import Event, EventId
from graph_app.state.reads import popular_items
from personalization import redis_keys
from signals_app import consumer
from signals_app.consumer import events_drain_all
from signals_app.services import events_ingest
from tests.signals_app.helpers import online_popularity

pytestmark = pytest.mark.django_db


def ago(**delta: float) -> str:
    return (timezone.now() - timedelta(**delta)).isoformat()


def event(event_id: str, item_id: str, timestamp: str, type: str = "view", user_id: str = "u1", **fields):
    return {
        "event_id": event_id,
        "type": type,
        "user_id": user_id,
        "item_id": item_id,
        "timestamp": timestamp,
        **fields,
    }


def drain() -> None:
    while events_drain_all().read:
        pass


@pytest.fixture
def catalog(api_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # the items' entities reach Redis after commit
        for item_id, category in [("a", "kitchen"), ("b", "kitchen"), ("x", "garden"), ("old", "garden")]:
            api_client.put(
                f"/api/v1/items/{item_id}",
                {"title": item_id, "category": category, "entities": [{"kind": "brand", "id": "acme"}]},
                format="json",
            )


def recent(client, user: str = "u1") -> list[str]:
    return [item.decode() for item in client.lrange(redis_keys.user_recent_items(user), 0, -1)]


def affinity_now(client, user: str = "u1") -> dict[str, float]:
    """The user's entity counters decayed to now (what the feature store reads)."""
    affinity = affinity_decode(client.hgetall(redis_keys.user_affinity(user)))
    factor = affinity.factor(time.time())
    return {name.decode(): value * factor for name, value in affinity.counters.items()}


def test_a_late_event_through_the_api_builds_online_state_once_the_log_stores_it(api_client, catalog, clean_redis):
    api_client.post(
        "/api/v1/events", {"events": [event("live-b", "b", ago(hours=20)), event("live-a", "a", ago(hours=1))]},
        format="json",
    )  # fmt: skip
    api_client.post("/api/v1/events", event("late-old", "old", ago(days=10)), format="json")
    drain()
    assert recent(clean_redis) == ["a", "b", "old"]  # the late item behind the newer ones

    late_x = event("late-x", "x", ago(days=3), type="purchase")
    response = api_client.post("/api/v1/events", late_x, format="json")
    assert response.json()["accepted"] == 1
    assert recent(clean_redis) == ["a", "b", "old"]  # the log decides first
    report = events_drain_all()

    assert report.late_applied == 1
    assert recent(clean_redis) == ["a", "b", "x", "old"]  # by event time, not arrival
    x_time = datetime.fromisoformat(late_x["timestamp"]).timestamp()
    assert clean_redis.zscore(redis_keys.user_purchased("u1"), "x") == pytest.approx(x_time)
    garden = 8 * 2 ** (-3 / 7) + 2 ** (-10 / 7)  # purchase (8) 3 days ago, view (1) 10 days ago: 7-day half-life
    assert affinity_now(clean_redis)["category:garden"] == pytest.approx(garden, rel=1e-3)
    brand = garden + 2 ** (-1 / 168) + 2 ** (-20 / 168)  # and the views of a and b, 1 and 20 hours ago
    assert affinity_now(clean_redis)["brand:acme"] == pytest.approx(brand, rel=1e-3)
    assert online_popularity()["x"] == pytest.approx(8 * 2**-3, rel=1e-3)  # 1-day window
    record = clean_redis.hget(redis_keys.item_counters(redis_keys.partition_of("u1")), "x")
    assert struct.unpack("<4d", record)[3] == pytest.approx(x_time)
    at = time.time()
    before = _user_snapshot(clean_redis, "u1", at), _items_snapshot(clean_redis, at)

    api_client.post("/api/v1/events", late_x, format="json")
    for key in clean_redis.scan_iter("seen:*"):
        clean_redis.delete(key)  # the 48 h dedupe window has passed: only the log knows the event now
    api_client.post("/api/v1/events", late_x, format="json")
    report = events_drain_all()

    assert (report.duplicates, report.late_applied) == (1, 0)
    assert (_user_snapshot(clean_redis, "u1", at), _items_snapshot(clean_redis, at)) == before
    assert Event.objects.filter(event_id="late-x").count() == 1


def test_a_late_item_never_jumps_ahead_of_an_item_that_arrived_after_it(api_client, catalog, clean_redis, monkeypatch):
    api_client.post("/api/v1/events", event("late-old", "old", ago(days=10)), format="json")
    drain()
    api_client.post("/api/v1/events", event("late-x", "x", ago(days=3)), format="json")
    # Arrives after the late event: at most 48 h old, so newer than it, though still in the stream when the
    # consumer applies the late one (batches of one entry) and so unknown to the log.
    api_client.post("/api/v1/events", event("live-a", "a", ago(hours=40)), format="json")
    monkeypatch.setattr(consumer, "READ_BATCH_SIZE", 1)

    report = events_drain_all()

    assert (report.read, report.late_applied) == (2, 1)
    assert recent(clean_redis) == ["a", "x", "old"]


class ConsumerDied(Exception):
    pass


def test_a_consumer_dying_between_the_log_and_the_online_apply_never_counts_twice(
    api_client, catalog, clean_redis, monkeypatch, settings
):
    def die(**kwargs):
        raise ConsumerDied

    api_client.post("/api/v1/events", event("late-x", "x", ago(days=3), type="purchase"), format="json")
    monkeypatch.setattr(consumer, "events_apply_online", die)
    with pytest.raises(ConsumerDied):
        events_drain_all()  # the batch committed, then the consumer died: its entry is still pending
    monkeypatch.undo()
    assert Event.objects.filter(event_id="late-x").exists()
    settings.EVENT_RECLAIM_IDLE_MS = 0

    report = events_drain_all()

    # Redelivered, the log answers "already stored": at most once online (rebuild_online_state restores it).
    assert (report.reclaimed, report.duplicates, report.late_applied) == (1, 1, 0)
    assert "x" not in online_popularity()
    assert recent(clean_redis) == []


def jsonl(path: Path, *events: dict) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in events))
    return path


def test_an_import_builds_the_online_state_of_known_customers(api_client, catalog, clean_redis, tmp_path):
    api_client.post("/api/v1/events", event("live-a", "a", ago(minutes=5)), format="json")  # live, not in the log
    source = jsonl(
        tmp_path / "history.jsonl",
        event("h-b", "b", ago(days=20)),
        event("h-x", "x", ago(days=5), type="purchase"),
        event("h-old", "old", ago(days=40), type="purchase"),
        event("live-a", "a", ago(minutes=5)),  # the same event as received live: counted once
        event("h-c2", "b", ago(hours=36), user_id="u2", type="add_to_cart"),  # within the dedupe window
    )

    call_command("import_events", str(source), "--no-progress", "--batch-size", "2", stdout=StringIO())

    assert recent(clean_redis) == ["a", "x", "b", "old"]
    assert recent(clean_redis, "u2") == ["b"]
    assert clean_redis.zrange(redis_keys.user_purchased("u1"), 0, -1) == [b"old", b"x"]
    garden = 8 * 2 ** (-5 / 7) + 8 * 2 ** (-40 / 7)
    assert affinity_now(clean_redis)["category:garden"] == pytest.approx(garden, rel=1e-3)
    assert online_popularity()["a"] == pytest.approx(2 ** (-5 / 1440), rel=1e-3)  # once, not twice
    assert online_popularity()["b"] == pytest.approx(2**-20 + 4 * 2**-1.5, rel=1e-3)
    at = time.time()
    before = _user_snapshot(clean_redis, "u1", at), _items_snapshot(clean_redis, at)

    call_command("import_events", str(source), "--no-progress", "--restart", stdout=StringIO())
    drain()  # the live event reaches the log as a duplicate

    assert (_user_snapshot(clean_redis, "u1", at), _items_snapshot(clean_redis, at)) == before


def test_the_purchased_set_keeps_more_than_the_cool_down_limit(clean_redis, settings):
    purchases = [event(f"p{n}", f"sku-{n}", ago(minutes=300 - n), type="purchase") for n in range(250)]
    for start in range(0, len(purchases), 100):
        events_ingest(raw_events=purchases[start : start + 100])

    assert clean_redis.zcard(redis_keys.user_purchased("u1")) == 250

    settings.SIGNALS_PURCHASED_ITEMS_KEPT = 240
    events_ingest(raw_events=[event("p-last", "sku-last", ago(minutes=1), type="purchase")])

    kept = clean_redis.zrange(redis_keys.user_purchased("u1"), 0, -1)
    assert len(kept) == 240 and kept[-1] == b"sku-last" and b"sku-10" not in kept  # the latest 240


# What the rebuild must reproduce: every user and item key that ingest writes (session items aside), decoded to
# values at one instant so that different decay epochs compare equal.
def _user_snapshot(client, user: str, at: float) -> dict[str, object]:
    affinity = affinity_decode(client.hgetall(redis_keys.user_affinity(user)))
    factor = affinity.factor(at)
    assert not client.exists(redis_keys.user_recent_last(user))  # the layout before "#r"
    return {
        "recent": recent(client, user),
        "recent_last": affinity.recent_last,
        "affinity": {name.decode(): value * factor for name, value in affinity.counters.items()},
        "category_times": {name.decode(): value for name, value in affinity.category_times.items()},
        "affinity_last": affinity.last,
        "purchased": dict(client.zrange(redis_keys.user_purchased(user), 0, -1, withscores=True)),
        "cooldown": dict(client.zrange(redis_keys.user_cooldown(user), 0, -1, withscores=True)),
    }


def _approx(value: object) -> object:
    """`value` with every number compared within float tolerance."""
    if isinstance(value, dict):
        return {key: _approx(inner) for key, inner in value.items()}
    if isinstance(value, tuple):
        return tuple(_approx(inner) for inner in value)
    if isinstance(value, list) and value and isinstance(value[0], float):
        return pytest.approx(value, rel=1e-6, abs=1e-12)
    return pytest.approx(value, rel=1e-6, abs=1e-12) if isinstance(value, float) else value


def _packed_now(client, key: str, half_lives: list[float], at: float) -> dict[str, list[float]]:
    totals: dict[str, list[float]] = {}
    for partition in redis_keys.partitions():
        for item, packed in client.hgetall(key.replace("{p0}", f"{{p{partition}}}")).items():
            *values, last = struct.unpack(f"<{len(half_lives) + 1}d", packed)
            decayed = [
                value * 2 ** (-(at - last) / half_life) for value, half_life in zip(values, half_lives, strict=True)
            ]
            row = totals.setdefault(item.decode(), [0.0] * len(half_lives))
            totals[item.decode()] = [a + b for a, b in zip(row, decayed, strict=True)]
    return totals


def _items_snapshot(client, at: float) -> dict[str, object]:
    windows = list(POPULARITY_HALF_LIVES.values())
    return {
        "counters": _packed_now(client, redis_keys.item_counters(0), windows, at),
        "ctr": _packed_now(client, redis_keys.placement_counters(0, "home"), [CTR_HALF_LIFE_SECONDS] * 2, at),
        **{
            f"trend_{window}": dict(popular_items(client, depth=100, now=at, window=window))
            for window in POPULARITY_HALF_LIVES
        },
    }


def test_the_rebuild_from_the_log_gives_the_state_live_ingest_built(api_client, catalog, clean_redis, tmp_path):
    api_client.post(
        "/api/v1/events",
        {
            "events": [
                event("e1", "b", ago(hours=30)),
                event("e2", "a", ago(hours=20), type="add_to_cart"),
                event("e3", "a", ago(hours=2), type="click", placement="home"),
                event("e4", "x", ago(hours=1), type="hide"),
                event("e5", "b", ago(minutes=30), type="purchase", user_id="u2"),
                event("e6", "old", ago(days=4), type="purchase"),  # late: applied by the consumer
            ]
        },
        format="json",
    )
    api_client.post("/api/v1/events", event("e7", "x", ago(days=6), user_id="u2"), format="json")
    api_client.post(
        "/api/v1/events", {"type": "view", "session_id": "s1", "item_id": "x", "event_id": "e8"}, format="json"
    )
    call_command(
        "import_events",
        str(jsonl(tmp_path / "h.jsonl", event("h1", "x", ago(days=12), type="save"), event("h2", "a", ago(days=9)))),
        "--no-progress",
        stdout=StringIO(),
    )
    drain()
    at = time.time()
    users = ["u1", "u2", "session:s1"]
    live = {user: _user_snapshot(clean_redis, user, at) for user in users}, _items_snapshot(clean_redis, at)
    assert live[0]["u1"]["recent"] == ["a", "b", "old", "x"] and live[1]["ctr"]["a"][0] > 0
    clean_redis.flushdb()

    out = StringIO()
    call_command("rebuild_online_state", stdout=out)

    rebuilt = {user: _user_snapshot(clean_redis, user, at) for user in users}, _items_snapshot(clean_redis, at)
    assert rebuilt == _approx(live)
    assert out.getvalue().startswith("3 users, 4 items, 1 item x placement records")


def test_the_rebuild_can_leave_items_or_users_alone(api_client, catalog, clean_redis):
    api_client.post("/api/v1/events", event("e1", "a", ago(hours=3), type="purchase"), format="json")
    drain()
    clean_redis.flushdb()

    call_command("rebuild_online_state", "--users-only", stdout=StringIO())
    assert recent(clean_redis) == ["a"] and online_popularity() == {}

    clean_redis.flushdb()
    call_command("rebuild_online_state", "--items-only", stdout=StringIO())
    assert recent(clean_redis) == [] and online_popularity()["a"] == pytest.approx(8 * 2 ** (-3 / 24), rel=1e-3)


def test_an_import_without_online_state_then_the_rebuild_gives_what_the_import_would_have(
    catalog, clean_redis, tmp_path
):
    source = jsonl(
        tmp_path / "history.jsonl",
        event("h-b", "b", ago(days=20)),
        event("h-x", "x", ago(days=5), type="purchase"),
        event("h-a", "a", ago(days=2), type="add_to_cart"),
        event("h-c", "b", ago(hours=36), user_id="u2", type="save"),
    )
    call_command("import_events", str(source), "--no-progress", stdout=StringIO())
    at = time.time()
    applied = {user: _user_snapshot(clean_redis, user, at) for user in ("u1", "u2")}, _items_snapshot(clean_redis, at)
    assert applied[0]["u1"]["recent"] == ["a", "x", "b"]
    clean_redis.flushdb()
    Event.objects.all().delete()
    EventId.objects.all().delete()  # the log's durable ids: else every event is a duplicate
    out = StringIO()

    call_command("import_events", str(source), "--no-progress", "--restart", "--no-online-state", stdout=out)

    assert Event.objects.count() == 4
    assert recent(clean_redis) == [] and online_popularity() == {}
    assert out.getvalue().splitlines()[-1].startswith("The online state was left alone: run `manage.py rebuild")

    call_command("rebuild_online_state", stdout=StringIO())

    rebuilt = {user: _user_snapshot(clean_redis, user, at) for user in ("u1", "u2")}, _items_snapshot(clean_redis, at)
    assert rebuilt == _approx(applied)


def test_the_rebuild_says_how_far_it_is(api_client, catalog, clean_redis, caplog, monkeypatch):
    from signals_app import rebuild

    monkeypatch.setattr(rebuild, "REBUILD_PROGRESS_SECONDS", 0)
    for number, item in enumerate(["a", "b", "a"]):
        api_client.post("/api/v1/events", event(f"p{number}", item, ago(hours=3 - number)), format="json")
    drain()

    with caplog.at_level(logging.INFO, logger="graph_app.progress"):
        call_command("rebuild_online_state", "--users-only", stdout=StringIO())

    lines = [record for record in caplog.records if record.name == "graph_app.progress"]
    assert lines and all(record.total == 3 for record in lines)
    assert lines[-1].done == 3 and "done in" in lines[-1].getMessage()
