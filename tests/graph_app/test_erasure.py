"""Erasure of a shopper (`operations.erasure`, `DELETE /api/v1/users/{user_id}`): a shopper with history in every
store is erased, then nothing anywhere names it, the shelf is the non-personal one and a new event starts afresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
from django.apps import apps
from django.db import connection
from rest_framework.test import APIClient

from graph_app.features.materialize import features_materialize
from graph_app.models import FeatureRow, Shopper
from graph_app.state.log import event_log_partitions_create
from graph_app.state.models import Event, Impression
from graph_app.user_lists import user_lists_refresh
from personalization import redis_keys
from personalization.services import api_key_create
from signals_app.consumer import events_drain_all
from signals_app.models import DeadLetter, IdentityLink
from surface_app.models import FrequencyCap, Placement
from tests.factories import ItemFactory, ShopperFactory, unit

pytestmark = pytest.mark.django_db

USER = "shopper-erased-q7"
LOGIN_SESSION = "sess-login-q7"  # carried by the user's own events
ANONYMOUS_SESSION = "sess-anon-q9"  # browsed before signing in, then identified (another partition)
EMAIL = "erased-q7@example.com"
KEPT = "shopper-kept-q7"  # another shopper, whose data must stay
NEEDLES = [USER, LOGIN_SESSION, ANONYMOUS_SESSION, EMAIL]


@pytest.fixture
def server_client(db: None) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='back end', scope='server').raw_key}")
    return client


@pytest.fixture
def shop(settings, vacuumed_vector_index):
    settings.EVENT_PARTITIONS = 4
    assert len({redis_keys.partition_of(USER), redis_keys.partition_of(f"session:{ANONYMOUS_SESSION}")}) == 2
    for name, vector in [("mug", unit(1, 0)), ("cup", unit(1, 0.1)), ("jug", unit(1, 0.3)), ("bag", unit(0, 1))]:
        ItemFactory(external_id=name, embedding=vector)
    for name in ["hat", "pen", "cap"]:
        ItemFactory(external_id=name, embedding=unit(0, 1, 0.5))
    home = Placement.objects.create(name="home", size=3)
    FrequencyCap.objects.create(name="thrice a day", scope="item", placement=home, max_impressions=3)


def _at(moment: datetime) -> str:
    return moment.isoformat()


def _post_events(client: APIClient, events: list[dict]) -> dict:
    response = client.post("/api/v1/events", {"events": events}, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def _recommend(client: APIClient, user_id: str) -> dict:
    response = client.get("/api/v1/recommendations", {"user_id": user_id, "placement": "home"})
    assert response.status_code == 200, response.content
    return response.json()


def _shopper_build(client: APIClient, clean_redis: redis.Redis, on_commit) -> None:
    """A shopper in every store: events in three monthly partitions of the log (and two Redis partitions), an
    identified anonymous session, traits, served slates and their impressions, an attributed click, a training row,
    a user vector and nearest list, a dead letter, and entries still in the streams."""
    now = datetime.now(UTC)
    old, older = now - timedelta(days=40), now - timedelta(days=75)
    event_log_partitions_create(months=[old.date().replace(day=1), older.date().replace(day=1)])
    _post_events(client, [
        {"event_id": f"{USER}-old-1", "type": "purchase", "user_id": USER, "item_id": "bag", "timestamp": _at(older)},
        {"event_id": f"{USER}-old-2", "type": "view", "user_id": USER, "item_id": "hat", "timestamp": _at(old)},
        {"event_id": "anon-1", "type": "view", "session_id": ANONYMOUS_SESSION, "item_id": "cup"},
        {"event_id": "anon-2", "type": "hide", "session_id": ANONYMOUS_SESSION, "item_id": "pen"},
        {"event_id": "kept-1", "type": "view", "user_id": KEPT, "item_id": "mug"},
    ])  # fmt: skip
    identified = client.post(f"/api/v1/users/{USER}/identify", {"session_id": ANONYMOUS_SESSION}, format="json")
    assert identified.status_code == 200
    traits = {"traits": {"email": EMAIL, "age": 41}}
    with on_commit(execute=True):  # the traits reach Redis after the commit
        assert client.put(f"/api/v1/users/{USER}", traits, format="json").status_code == 201
    _post_events(client, [
        {"event_id": "login-1", "type": "view", "user_id": USER, "session_id": LOGIN_SESSION, "item_id": "mug"},
        {"event_id": "login-2", "type": "add_to_cart", "user_id": USER, "session_id": LOGIN_SESSION, "item_id": "jug"},
    ])  # fmt: skip
    served = _recommend(client, USER)
    _post_events(client, [{
        "event_id": "login-3", "type": "click", "user_id": USER, "session_id": LOGIN_SESSION, "placement": "home",
        "request_id": served["request_id"], "item_id": served["items"][0]["item_id"], "slot": 0,
    }])  # fmt: skip
    assert events_drain_all().stored == 8
    features_materialize(now=datetime.now(UTC) + timedelta(minutes=31))
    Shopper.objects.filter(external_id=USER).update(embedding=unit(1, 0.05))
    ShopperFactory(external_id="shopper-kept-q7-vector", embedding=unit(0, 1))
    user_lists_refresh()
    DeadLetter.objects.create(
        stream=redis_keys.event_stream(1), entry_id="1-1", error="could not be stored",
        payload=orjson.dumps({"kind": "event", "event_id": "dead-1", "type": "view", "user_id": USER,
                              "session_id": "", "item_id": "mug"}).decode(),
    )  # fmt: skip
    # Not drained yet: an event, a served slate's impression and a session event.
    _recommend(client, USER)
    _post_events(client, [
        {"event_id": "login-4", "type": "view", "user_id": USER, "session_id": LOGIN_SESSION, "item_id": "cup"},
        {"event_id": "anon-3", "type": "view", "session_id": ANONYMOUS_SESSION, "item_id": "hat"},
        {"event_id": "kept-2", "type": "view", "user_id": KEPT, "item_id": "cup"},
    ])  # fmt: skip

    # The shopper is everywhere before the erasure (the counts below would otherwise prove nothing).
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT tableoid) FROM signals_app_event WHERE user_id = %s", [USER])
        assert cursor.fetchone()[0] == 3
    assert IdentityLink.objects.filter(user_id=USER).count() == 2
    assert Impression.objects.filter(user_key=USER).exists()
    assert FeatureRow.objects.filter(user_key=USER).exists()
    assert clean_redis.hget(redis_keys.user_nearest_lists(redis_keys.partition_of(USER)), USER)
    assert clean_redis.exists(redis_keys.user_traits(USER), redis_keys.user_cap_counts(USER)) == 2
    assert pg_mentions(NEEDLES) and redis_mentions(clean_redis, NEEDLES)


def pg_mentions(needles: list[str]) -> dict[str, int]:
    """Rows that mention any needle in any column, per table: every table of the database (partitions included),
    which must include every model's."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {row[0] for row in cursor.fetchall()}
        models = {model._meta.db_table for model in apps.get_models(include_auto_created=True)}
        assert models <= tables
        found = {}
        for table in sorted(tables):
            conditions = " OR ".join(["strpos(t::text, %s) > 0"] * len(needles))
            cursor.execute(f'SELECT count(*) FROM ONLY "{table}" AS t WHERE {conditions}', needles)
            if count := cursor.fetchone()[0]:
                found[table] = count
    return found


def _contents(client: redis.Redis, key: bytes) -> list[bytes]:
    kind = client.type(key)
    if kind == b"string":
        return [client.get(key) or b""]
    if kind == b"hash":
        return [part for pair in client.hgetall(key).items() for part in pair]
    if kind == b"list":
        return client.lrange(key, 0, -1)
    if kind == b"set":
        return list(client.smembers(key))
    if kind == b"zset":
        return client.zrange(key, 0, -1)
    if kind == b"stream":
        return [part for _, fields in client.xrange(key) for pair in fields.items() for part in pair]
    return []


def redis_mentions(client: redis.Redis, needles: list[str]) -> list[bytes]:
    """Keys whose name, fields, members or values mention any needle: the whole database."""
    encoded = [needle.encode() for needle in needles]
    return sorted(
        key
        for key in client.scan_iter(count=1000)
        if any(needle in blob for blob in [key, *_contents(client, key)] for needle in encoded)
    )


def test_erasure_leaves_nothing_anywhere_unpersonalizes_at_once_and_a_new_event_starts_afresh(
    api_client, server_client, clean_redis, shop, django_capture_on_commit_callbacks
):
    _shopper_build(api_client, clean_redis, django_capture_on_commit_callbacks)
    kept_events = Event.objects.filter(user_id=KEPT).count()
    stranger = [item["item_id"] for item in _recommend(api_client, "never-seen-q7")["items"]]
    personal = _recommend(api_client, USER)
    assert [item["item_id"] for item in personal["items"]] != stranger

    response = server_client.delete(f"/api/v1/users/{USER}")

    assert response.status_code == 200
    # In the log: 2 old, 2 anonymous, 3 signed-in events; the first slate's 3 impressions; both sessions' links. In
    # the streams: 2 events and 2 slates' impressions. 3 slates kept for attribution.
    assert response.json() == {
        "user_id": USER, "shoppers": 1, "sessions": 2, "events": 7, "impressions": 3, "bandit_decisions": 0,
        "identity_links": 2, "dead_letters": 1, "feature_rows": 3, "stream_entries": 4,
        "redis_keys": response.json()["redis_keys"], "cached_slates": 3,
    }  # fmt: skip
    assert response.json()["redis_keys"] >= 15
    assert redis_mentions(clean_redis, NEEDLES) == []
    events_drain_all()  # what was in flight is gone, the other shopper's is stored
    assert pg_mentions(NEEDLES) == {}
    assert Event.objects.filter(user_id=KEPT).count() == kept_events + 1
    # The shelf is the non-personal one (serving it logs the impressions of a new history).
    after = _recommend(api_client, USER)
    assert [item["item_id"] for item in after["items"]] == stranger
    assert {item["source"] for item in after["items"]} <= {"popular", "fresh", "default"}

    # A new event starts a new history, and a new shopper.
    fresh = _post_events(api_client, [{"event_id": "after-1", "type": "view", "user_id": USER, "item_id": "bag"}])
    assert fresh["accepted"] == 1
    assert events_drain_all().stored == 1
    assert list(Event.objects.filter(user_id=USER).values_list("event_id", flat=True)) == ["after-1"]
    assert Shopper.objects.get(external_id=USER).traits == {}
    assert clean_redis.lrange(redis_keys.user_recent_items(USER), 0, -1) == [b"bag"]


def test_a_public_key_cannot_erase_and_an_unknown_user_erases_nothing(server_client, db):
    public = APIClient()
    public.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='page', scope='public').raw_key}")
    ShopperFactory(external_id=KEPT)

    refused = public.delete(f"/api/v1/users/{KEPT}")
    unknown = server_client.delete("/api/v1/users/nobody-q7")

    assert refused.status_code == 403
    assert Shopper.objects.filter(external_id=KEPT).exists()
    assert unknown.status_code == 200
    assert {name: count for name, count in unknown.json().items() if name != "user_id" and count} == {}
