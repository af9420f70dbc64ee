from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from graph_app.features.user_affinity import affinity_decode, entity_code
from graph_app.models import Shopper
from graph_app.state.dedupe import event_ids_seen
from graph_app.state.models import Event, Impression
from personalization import redis_keys
from signals_app.consumer import events_drain_all
from tests.signals_app.helpers import online_popularity, stream_lengths

pytestmark = pytest.mark.django_db


def view(event_id: str, **overrides):
    return {"event_id": event_id, "type": "view", "user_id": "u1", "item_id": "sku-1", **overrides}


def test_single_event_updates_online_state_then_reaches_the_log(api_client, clean_redis):
    response = api_client.post("/api/v1/events", view("e1", placement="home", value=1.5, slot=2), format="json")

    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"sku-1"]
    assert online_popularity()["sku-1"] == pytest.approx(1.0, rel=1e-4)
    assert stream_lengths() == 1
    assert not Event.objects.exists()  # no PostgreSQL on the ingest path

    report = events_drain_all()

    assert (report.read, report.stored) == (1, 1)
    event = Event.objects.get(event_id="e1")
    assert (event.type, event.user_id, event.item_id, event.placement, event.value, event.slot) == (
        "view", "u1", "sku-1", "home", 1.5, 2,
    )  # fmt: skip
    assert Shopper.objects.filter(external_id="u1").exists()
    assert stream_lengths() == 0  # acknowledged entries are trimmed


def test_same_event_id_counts_once_across_requests_and_within_a_batch(api_client):
    api_client.post("/api/v1/events", view("e1"), format="json")

    again = api_client.post("/api/v1/events", {"events": [view("e1"), view("e2"), view("e2")]}, format="json")

    assert again.json() == {"accepted": 1, "duplicates": 2, "rejected": 0, "errors": []}
    assert online_popularity()["sku-1"] == pytest.approx(2.0, rel=1e-4)
    events_drain_all()
    assert Event.objects.count() == 2


def test_retrying_a_whole_batch_never_double_counts(api_client):
    batch = {"events": [view(f"b{n}", item_id=f"sku-{n % 3}") for n in range(30)]}

    first = api_client.post("/api/v1/events", batch, format="json").json()
    retry = api_client.post("/api/v1/events", batch, format="json").json()
    events_drain_all()

    assert (first["accepted"], retry["accepted"], retry["duplicates"]) == (30, 0, 30)
    assert Event.objects.count() == 30
    assert sum(online_popularity().values()) == pytest.approx(30.0, rel=1e-4)


def test_a_large_batch_reports_each_events_outcome_across_script_calls():
    from graph_app.state.ingest import SCRIPT_CALL_EVENTS
    from signals_app.services import events_ingest

    batch = [view(f"c{n}", user_id=f"u{n % 3}") for n in range(3 * SCRIPT_CALL_EVENTS + 7)]
    events_ingest(raw_events=batch[::2])

    report = events_ingest(raw_events=batch)

    assert [event.event_id for event in report.accepted_events] == [raw["event_id"] for raw in batch[1::2]]
    assert report.duplicates == len(batch[::2])


def test_resend_after_the_online_window_is_stored_once(api_client, clean_redis):
    old = (timezone.now() - timedelta(days=3)).isoformat()
    api_client.post("/api/v1/events", view("old-1", timestamp=old), format="json")
    events_drain_all()
    for key in clean_redis.scan_iter("seen:*"):
        clean_redis.delete(key)  # the 48 h dedupe window has passed

    api_client.post("/api/v1/events", view("old-1", timestamp=old), format="json")
    events_drain_all()

    assert Event.objects.filter(event_id="old-1").count() == 1
    # Applied online once, when the log first stored it: a view 3 days old in the 1-day window.
    assert online_popularity()["sku-1"] == pytest.approx(2**-3, rel=1e-3)


def test_batch_accepts_valid_events_and_reports_each_rejected_one(api_client):
    future = (timezone.now() + timedelta(minutes=10)).isoformat()
    late = (timezone.now() - timedelta(days=1)).isoformat()
    response = api_client.post(
        "/api/v1/events",
        {
            "events": [
                view("ok-1"),
                view("bad-type", type="teleport"),
                view("no-user", user_id=""),
                view("no-item", item_id=""),
                view("future", timestamp=future),
                view("late", timestamp=late),
                {"type": "search", "session_id": "s1", "event_id": "search-1", "context": {"query": "mug"}},
                "junk",
                view("nul\u0000id"),
                view("x" * 101),
                view("big", context={"blob": "x" * 33 * 1024}),
                view("nested-nul", context={"a": [{"b": "c\u0000"}]}),
                view("bad-slot", slot=-1),
                view("bad-value", value="lots"),
                view("bad-time", timestamp="yesterday"),
            ]
        },
        format="json",
    )

    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (3, 12)
    assert {(error["index"], error["field"]) for error in body["errors"]} == {
        (1, "type"),
        (2, "user_id"),
        (3, "item_id"),
        (4, "timestamp"),
        (7, "event"),
        (8, "event_id"),
        (9, "event_id"),
        (10, "event"),
        (11, "context"),
        (12, "slot"),
        (13, "value"),
        (14, "timestamp"),
    }
    events_drain_all()
    assert set(Event.objects.values_list("event_id", flat=True)) == {"ok-1", "late", "search-1"}
    assert Event.objects.get(event_id="late").occurred_at < timezone.now() - timedelta(hours=23)


def test_body_over_one_megabyte_is_413_and_nothing_is_kept(api_client):
    events = [view(f"e{n}", context={"pad": "x" * 2500}) for n in range(450)]

    response = api_client.post("/api/v1/events", {"events": events}, format="json")

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert stream_lengths() == 0


def test_session_events_build_session_state(api_client, clean_redis):
    api_client.post("/api/v1/events", view("e1", user_id="", session_id="s-9"), format="json")

    assert clean_redis.lrange(redis_keys.user_recent_items("session:s-9"), 0, -1) == [b"sku-1"]


def test_recent_items_move_to_front_without_repeats(api_client, clean_redis):
    api_client.post(
        "/api/v1/events",
        {
            "events": [
                view("e1", item_id="a"),
                view("e2", item_id="b"),
                view("e3", item_id="a"),
                view("e4", type="skip", item_id="c"),
            ]
        },
        format="json",
    )

    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"a", b"b"]


def test_entity_affinities_and_session_items_are_decayed_counters(
    api_client, clean_redis, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):  # the item's entities reach Redis after commit
        api_client.put(
            "/api/v1/items/mug",
            {"title": "Mug", "category": "kitchen", "entities": [{"kind": "brand", "id": "acme"}]},
            format="json",
        )
    api_client.post(
        "/api/v1/events",
        {
            "events": [
                view("e1", item_id="mug", session_id="s1"),
                view("e2", item_id="mug", type="purchase", session_id="s1"),
            ]
        },
        format="json",
    )

    raw = clean_redis.hgetall(redis_keys.user_affinity("u1"))
    affinity = affinity_decode(raw)
    # Forward decay: weights (view 1 + purchase 8) stored against the key's epoch, the first event's time; one
    # field an entity, named by its 6-byte code (a packed float), and only a category keeps its latest time; the
    # times in "#m".
    assert set(raw) == {b"#m", entity_code("category:kitchen"), entity_code("brand:acme")}
    assert affinity.counters == {b"category:kitchen": pytest.approx(9.0), b"brand:acme": pytest.approx(9.0)}
    assert affinity.category_times[b"category:kitchen"] == affinity.last == affinity.recent_last >= affinity.epoch
    assert len(raw[entity_code("brand:acme")]) == 4 and len(raw[entity_code("category:kitchen")]) == 12
    assert not clean_redis.exists(redis_keys.user_recent_last("u1"))
    assert clean_redis.lrange(redis_keys.user_session_items("u1", "s1"), 0, -1) == [b"mug"]
    assert 0 < clean_redis.ttl(redis_keys.user_session_items("u1", "s1")) <= 1800


@pytest.mark.parametrize(
    "body",
    [["a", "list"], {"events": "nope"}, {"events": []}, {"events": [view(f"e{n}") for n in range(501)]}],
)
def test_malformed_bodies_are_400_and_store_nothing(api_client, body):
    response = api_client.post("/api/v1/events", body, format="json")

    assert response.status_code == 400
    assert response.json()["errors"]
    assert stream_lengths() == 0


def test_invalid_json_is_400(api_client):
    response = api_client.post("/api/v1/events", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_events_require_a_key(anonymous_client):
    assert anonymous_client.post("/api/v1/events", view("e1"), format="json").status_code == 401
    assert stream_lengths() == 0


# Issue 3 §6: "Redis down -> 503 with Retry-After within 100 ms": a Redis that refuses connections is known at once.
ANSWER_BOUND_SECONDS = 0.1


def test_redis_outage_answers_503_with_retry_after_and_nothing_applied(api_client, monkeypatch):
    from signals_app import services
    from tests.conftest import dead_redis

    monkeypatch.setattr(services, "get_ingest_redis", dead_redis)
    api_client.post("/api/v1/events", view("warm-up"), format="json")  # the first request of a process pays imports

    started = time.perf_counter()
    response = api_client.post("/api/v1/events", {"events": [view("e1"), view("e2")]}, format="json")
    elapsed = time.perf_counter() - started

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = response.json()
    assert body["code"] == "service_unavailable"
    assert (body["applied"], body["not_applied"], body["unknown"]) == ([], [0, 1], [])
    assert elapsed < ANSWER_BOUND_SECONDS


def test_hung_redis_answers_503_with_the_events_unknown(api_client, monkeypatch, tmp_path):
    """A Redis that accepts connections but never answers (SIGSTOP): the socket timeout turns it into a 503 that
    says the events were sent and may have been applied (a resend is safe)."""
    import os
    import signal

    from personalization import embedded
    from personalization.redis_client import redis_client_for
    from signals_app import services

    url = embedded.ensure_valkey(tmp_path)
    pid = int((tmp_path / "valkey" / "valkey.pid").read_text())
    hung_client = redis_client_for(url)  # the hot path's 50 ms, not ingest's 2 s: the test need not wait
    monkeypatch.setattr(services, "get_ingest_redis", lambda: hung_client)
    assert api_client.post("/api/v1/events", view("warm-up"), format="json").status_code == 202
    os.kill(pid, signal.SIGSTOP)
    try:
        response = api_client.post("/api/v1/events", {"events": [view("e1"), view("e2", type="nope")]}, format="json")
    finally:
        os.kill(pid, signal.SIGCONT)
        embedded.stop_valkey(tmp_path)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = response.json()
    assert (body["applied"], body["not_applied"], body["unknown"]) == ([], [1], [0])


def _user_in_partition(partition: int, taken: set[str] = frozenset()) -> str:
    return next(
        user
        for user in (f"u-{n}" for n in range(1000))
        if redis_keys.partition_of(user) == partition and user not in taken
    )


def test_a_partition_whose_script_fails_leaves_its_events_unknown_and_the_others_applied(api_client, clean_redis):
    """One script call per partition: one that fails (here its popularity epochs key has the wrong type, which the
    script reads before writing anything) does not undo the others, and the 503 says which indexes were applied."""
    healthy, failing = _user_in_partition(0), _user_in_partition(1)
    clean_redis.set(redis_keys.item_trend_epochs(1), "not a hash")
    batch = [
        view("a0", user_id=healthy),
        view("f1", user_id=failing),
        view("a2", user_id=healthy, item_id="sku-2"),
        view("r3", type="nope"),
        view("a0"),  # a repeat of index 0 within the batch: as applied as index 0
    ]

    response = api_client.post("/api/v1/events", {"events": batch}, format="json")

    assert response.status_code == 503
    body = response.json()
    assert (body["applied"], body["not_applied"], body["unknown"]) == ([0, 2, 4], [3], [1])
    assert body["errors"] == {}
    assert event_ids_seen(clean_redis, [(0, "a0"), (0, "a2"), (1, "f1")], time.time()) == [True, True, False]
    assert clean_redis.xlen(redis_keys.event_stream(0)) == 2
    assert clean_redis.xlen(redis_keys.event_stream(1)) == 0
    events_drain_all()
    assert set(Event.objects.values_list("event_id", flat=True)) == {"a0", "a2"}

    clean_redis.delete(redis_keys.item_trend_epochs(1))
    retry = api_client.post("/api/v1/events", {"events": batch}, format="json")

    assert retry.status_code == 202
    assert retry.json()["accepted"] == 1  # f1; the applied ones are duplicates: resending is safe
    assert retry.json()["duplicates"] == 3


def test_redis_over_its_memory_applies_nothing_and_says_so(clean_redis):
    """Redis refuses a script's first write when over maxmemory: nothing of any call was written. (The service is
    called directly: the API's rate limiter writes to Redis too, and would be refused first.)"""
    from signals_app.services import IngestIncomplete, events_ingest

    maxmemory = clean_redis.config_get("maxmemory")["maxmemory"]
    policy = clean_redis.config_get("maxmemory-policy")["maxmemory-policy"]
    clean_redis.config_set("maxmemory-policy", "noeviction")
    clean_redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(IngestIncomplete) as incomplete:
            events_ingest(raw_events=[view("m0"), view("m1", user_id=_user_in_partition(2))])
    finally:
        clean_redis.config_set("maxmemory", maxmemory)
        clean_redis.config_set("maxmemory-policy", policy)

    assert (incomplete.value.applied, incomplete.value.not_applied, incomplete.value.unknown) == ([], [0, 1], [])
    assert stream_lengths() == 0
    assert not clean_redis.keys("seen:*")


def test_metrics_count_events_by_type_and_outcome(api_client):
    api_client.post("/api/v1/events", {"events": [view("m1"), view("m1"), view("m2", type="nope")]}, format="json")

    text = api_client.get("/metrics").content.decode()

    assert 'signals_events_total{outcome="accepted",type="view"}' in text
    assert 'signals_events_total{outcome="duplicate",type="view"}' in text
    assert 'signals_events_total{outcome="rejected",type="other"}' in text
    assert "signals_ingest_seconds_bucket" in text
    assert 'signals_stream_length{partition="' in text
    lag_lines = [line for line in text.splitlines() if line.startswith("signals_consumer_lag{")]
    assert sum(float(line.split()[-1]) for line in lag_lines) == 1.0


def test_served_slate_attribution_reaches_the_log(api_client, clean_redis):
    clean_redis.set(
        redis_keys.slate("req-1"),
        json.dumps(
            {
                "placement": "home",
                "model_version": "embeddings-v3",
                "items": [{"item_id": "sku-9", "slot": 4, "score": 0.7, "source": "similar"}],
            }
        ),
    )

    api_client.post("/api/v1/events", view("click-1", type="click", item_id="sku-9", request_id="req-1"), format="json")
    events_drain_all()

    event = Event.objects.get(event_id="click-1")
    assert (event.attributed_placement, event.attributed_slot, event.attributed_model_version) == (
        "home",
        4,
        "embeddings-v3",
    )
    assert (event.attributed_score, event.attributed_source) == (0.7, "similar")


@pytest.mark.parametrize(("served_days_ago", "attributed"), [(6, True), (8, False)])
def test_a_slate_redis_no_longer_keeps_is_attributed_from_the_impression_log_within_the_window(
    api_client, clean_redis, served_days_ago, attributed
):
    served_at = timezone.now() - timedelta(days=served_days_ago)
    for slot, item_id in enumerate(["sku-1", "sku-9"]):
        Impression.objects.create(
            request_id="req-old", user_key="u1", placement="cart", item_id=item_id, slot=slot, score=0.5 - slot / 10,
            source="popular", model_version="ranker-v2", served_at=served_at,
        )  # fmt: skip

    api_client.post(
        "/api/v1/events", view("click-old", type="click", item_id="sku-9", request_id="req-old"), format="json"
    )
    events_drain_all()

    event = Event.objects.get(event_id="click-old")
    fields = (event.attributed_placement, event.attributed_slot, event.attributed_model_version, event.attributed_score)
    assert fields == (("cart", 1, "ranker-v2", pytest.approx(0.4)) if attributed else ("", None, "", None))


def test_the_text_backslash_u0000_is_not_a_nul(api_client):
    response = api_client.post(
        "/api/v1/events", view("lit", context={"note": "\\u0000 is how JSON writes NUL"}), format="json"
    )
    assert response.json()["accepted"] == 1
