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

    page = admin_client.get(reverse("admin:signals_app_event_changelist"))
    filtered = admin_client.get(reverse("admin:signals_app_event_changelist"), {"q": "bc"})

    assert page.status_code == filtered.status_code == 200
    assert "0001-12-31 10:00:00+00 BC" in filtered.content.decode()
    assert b"ordinary" in page.content
