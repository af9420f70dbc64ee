"""The online state rebuilt from the log: what live ingest built, users or items alone, after an import without
online state, with progress; an identified session's events as its user's."""

from __future__ import annotations

import logging
import time
from io import StringIO

import pytest
from django.core.management import call_command

from graph_app.state import rebuild
from graph_app.state.interface import OnlineStateRebuildReport, online_state_rebuild
from graph_app.state.models import Event, EventId
from tests.signals_app.helpers import (
    ago,
    approx_all,
    drain,
    event,
    items_snapshot,
    jsonl,
    online_popularity,
    recent,
    user_snapshot,
)

pytestmark = pytest.mark.django_db


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
    live = {user: user_snapshot(clean_redis, user, at) for user in users}, items_snapshot(clean_redis, at)
    assert live[0]["u1"]["recent"] == ["a", "b", "old", "x"] and live[1]["ctr"]["a"][0] > 0
    clean_redis.flushdb()

    report = online_state_rebuild(sessions_to_users=())

    rebuilt = {user: user_snapshot(clean_redis, user, at) for user in users}, items_snapshot(clean_redis, at)
    assert rebuilt == approx_all(live)
    assert report == OnlineStateRebuildReport(users=3, items=4, placement_items=1)


def test_the_rebuild_can_leave_items_or_users_alone(api_client, catalog, clean_redis):
    api_client.post("/api/v1/events", event("e1", "a", ago(hours=3), type="purchase"), format="json")
    drain()
    clean_redis.flushdb()

    online_state_rebuild(sessions_to_users=(), items=False)
    assert recent(clean_redis) == ["a"] and online_popularity() == {}

    clean_redis.flushdb()
    online_state_rebuild(sessions_to_users=(), users=False)
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
    applied = {user: user_snapshot(clean_redis, user, at) for user in ("u1", "u2")}, items_snapshot(clean_redis, at)
    assert applied[0]["u1"]["recent"] == ["a", "x", "b"]
    clean_redis.flushdb()
    Event.objects.all().delete()
    EventId.objects.all().delete()  # the log's durable ids: else every event is a duplicate
    out = StringIO()

    call_command("import_events", str(source), "--no-progress", "--restart", "--no-online-state", stdout=out)

    assert Event.objects.count() == 4
    assert recent(clean_redis) == [] and online_popularity() == {}
    assert out.getvalue().splitlines()[-1].startswith("The online state was left alone: run `manage.py rebuild")

    online_state_rebuild(sessions_to_users=())

    rebuilt = {user: user_snapshot(clean_redis, user, at) for user in ("u1", "u2")}, items_snapshot(clean_redis, at)
    assert rebuilt == approx_all(applied)


def test_the_rebuild_says_how_far_it_is(api_client, catalog, clean_redis, caplog, monkeypatch):
    monkeypatch.setattr(rebuild, "REBUILD_PROGRESS_SECONDS", 0)
    for number, item in enumerate(["a", "b", "a"]):
        api_client.post("/api/v1/events", event(f"p{number}", item, ago(hours=3 - number)), format="json")
    drain()

    with caplog.at_level(logging.INFO, logger="graph_app.progress"):
        online_state_rebuild(sessions_to_users=(), items=False)

    lines = [record for record in caplog.records if record.name == "graph_app.progress"]
    assert lines and all(record.total == 3 for record in lines)
    assert lines[-1].done == 3 and "done in" in lines[-1].getMessage()


def test_an_identified_sessions_events_are_rebuilt_as_its_users(api_client, catalog, clean_redis, monkeypatch):
    monkeypatch.setattr(rebuild, "IDENTITY_LINKS_COPY_ROWS", 2)  # the links in more than one batch
    api_client.post("/api/v1/events", event("u1-a", "a", ago(hours=3)), format="json")
    for number, (session, item) in enumerate([("s1", "x"), ("s2", "b"), ("s3", "old")]):
        session_event = {"type": "view", "session_id": session, "item_id": item, "timestamp": ago(hours=2 - number)}
        api_client.post("/api/v1/events", {**session_event, "event_id": f"s-{number}"}, format="json")
    drain()
    clean_redis.flushdb()
    links = iter([("s0", "u9"), ("s1", "u1"), ("s2", "u2")])  # read once, as from a cursor

    report = online_state_rebuild(sessions_to_users=links, items=False)

    assert report == OnlineStateRebuildReport(users=3)  # u1, u2 and the anonymous session s3
    assert recent(clean_redis) == ["x", "a"] and recent(clean_redis, "u2") == ["b"]
    assert recent(clean_redis, "session:s3") == ["old"]
    assert recent(clean_redis, "session:s1") == [] and recent(clean_redis, "u9") == []
