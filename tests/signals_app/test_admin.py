"""The console's event list survives whatever the append-only log already holds."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from tests.factories import EventFactory

pytestmark = pytest.mark.django_db


def test_the_event_list_shows_a_row_stored_before_year_one_and_a_deep_context(admin_client):
    EventFactory(event_id="ordinary")
    deep_context = '{"a":' * 900 + "1" + "}" * 900  # jsonb keeps it; Python's json.loads would recurse too deep
    with connection.cursor() as cursor:  # as the log stored it before timestamps were bounded
        cursor.execute(
            "INSERT INTO signals_app_event (event_id, type, user_id, session_id, item_id, placement, request_id,"
            " context, occurred_at, received_at, attributed_placement, attributed_model_version, attributed_source)"
            " VALUES ('bc', 'view', 'u1', '', 'i1', '', '', %s::jsonb, '0001-01-01 00:00:00+14', now(), '', '', '')",
            [deep_context],
        )

    page = admin_client.get(reverse("admin:graph_app_event_changelist"))
    filtered = admin_client.get(reverse("admin:graph_app_event_changelist"), {"q": "bc"})

    assert page.status_code == filtered.status_code == 200
    assert "0001-12-31 10:00:00+00 BC" in filtered.content.decode()
    assert b"ordinary" in page.content


def test_the_event_page_shows_a_row_stored_before_year_one_with_a_deep_context(admin_client):
    deep_context = '{"a":' * 900 + "1" + "}" * 900
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO signals_app_event (event_id, type, user_id, session_id, item_id, placement, request_id,"
            " context, occurred_at, received_at, attributed_placement, attributed_model_version, attributed_source)"
            " VALUES ('bc', 'view', 'u1', '', 'i1', '', '', %s::jsonb, '0001-01-01 00:00:00+14', now(), '', '', '')"
            " RETURNING id",
            [deep_context],
        )
        (row_id,) = cursor.fetchone()

    page = admin_client.get(reverse("admin:graph_app_event_change", args=[row_id]))

    assert page.status_code == 200
    text = page.content.decode()
    assert "0001-12-31 10:00:00+00 BC" in text
    assert "{&quot;a&quot;: {&quot;a&quot;:" in text  # the context as PostgreSQL prints it


def test_the_replay_action_queues_dead_letters_for_the_log_once(admin_client, clean_redis):
    from graph_app.state.models import Event
    from personalization import redis_keys
    from signals_app.consumer import events_drain_all
    from signals_app.models import DeadLetter

    payload = (
        '{"kind": "event", "event_id": "from-the-dead", "type": "view", "user_id": "u1", "session_id": "",'
        ' "item_id": "sku-1", "placement": "", "request_id": "", "slot": null, "value": null, "context": {},'
        ' "occurred_at": "2026-12-01T10:00:00+00:00", "received_at": "2026-12-01T10:00:00+00:00"}'
    )
    stream = redis_keys.event_stream(redis_keys.partition_of("u1"))
    dead = DeadLetter.objects.create(stream=stream, entry_id="1-0", payload=payload, error="tried 5 times")
    changelist = reverse("admin:signals_app_deadletter_changelist")

    for _ in range(2):
        response = admin_client.post(changelist, {"action": "replay_selected", "_selected_action": [dead.pk]})
        assert response.status_code == 302
    assert clean_redis.xlen(stream) == 1  # queued once: the second run left the replayed row alone
    events_drain_all()

    assert list(Event.objects.values_list("event_id", flat=True)) == ["from-the-dead"]
    dead.refresh_from_db()
    assert dead.replayed_at is not None
