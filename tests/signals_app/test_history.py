"""History counts online: late events (applied once the log stored them) and imports (the rebuild from the log:
`tests/graph_app/state/test_rebuild.py`)."""

from __future__ import annotations

import struct
import time
from datetime import datetime
from io import StringIO

import pytest
from django.core.management import call_command

from graph_app.features.user_affinity import affinity_decode
from graph_app.state.models import Event
from personalization import redis_keys
from signals_app import consumer
from signals_app.consumer import events_drain_all
from signals_app.services import events_ingest
from tests.signals_app.helpers import ago, drain, event, items_snapshot, jsonl, online_popularity, recent, user_snapshot

pytestmark = pytest.mark.django_db


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
    before = user_snapshot(clean_redis, "u1", at), items_snapshot(clean_redis, at)

    api_client.post("/api/v1/events", late_x, format="json")
    for key in clean_redis.scan_iter("seen:*"):
        clean_redis.delete(key)  # the 48 h dedupe window has passed: only the log knows the event now
    api_client.post("/api/v1/events", late_x, format="json")
    report = events_drain_all()

    assert (report.duplicates, report.late_applied) == (1, 0)
    assert (user_snapshot(clean_redis, "u1", at), items_snapshot(clean_redis, at)) == before
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
    before = user_snapshot(clean_redis, "u1", at), items_snapshot(clean_redis, at)

    call_command("import_events", str(source), "--no-progress", "--restart", stdout=StringIO())
    drain()  # the live event reaches the log as a duplicate

    assert (user_snapshot(clean_redis, "u1", at), items_snapshot(clean_redis, at)) == before


def test_the_purchased_set_keeps_more_than_the_cool_down_limit(clean_redis, settings):
    purchases = [event(f"p{n}", f"sku-{n}", ago(minutes=300 - n), type="purchase") for n in range(250)]
    for start in range(0, len(purchases), 100):
        events_ingest(raw_events=purchases[start : start + 100])

    assert clean_redis.zcard(redis_keys.user_purchased("u1")) == 250

    settings.SIGNALS_PURCHASED_ITEMS_KEPT = 240
    events_ingest(raw_events=[event("p-last", "sku-last", ago(minutes=1), type="purchase")])

    kept = clean_redis.zrange(redis_keys.user_purchased("u1"), 0, -1)
    assert len(kept) == 240 and kept[-1] == b"sku-last" and b"sku-10" not in kept  # the latest 240
