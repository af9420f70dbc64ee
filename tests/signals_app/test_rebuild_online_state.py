"""`manage.py rebuild_online_state`: Signal's command hands the identity links to the state package's rebuild
(`tests/graph_app/state/test_rebuild.py` checks the rebuild itself)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from signals_app.models import IdentityLink
from tests.signals_app.helpers import ago, drain, event, recent

pytestmark = pytest.mark.django_db


def test_the_command_rebuilds_an_identified_sessions_history_as_its_users(api_client, catalog, clean_redis):
    anonymous = {"type": "view", "session_id": "s1", "item_id": "x", "event_id": "s-x", "timestamp": ago(hours=2)}
    api_client.post("/api/v1/events", anonymous, format="json")
    api_client.post("/api/v1/users/u1/identify", {"session_id": "s1"}, format="json")
    api_client.post("/api/v1/events", event("u1-a", "a", ago(hours=1)), format="json")
    drain()
    assert IdentityLink.objects.get(session_id="s1").user_id == "u1"
    assert recent(clean_redis) == ["a", "x"]
    clean_redis.flushdb()
    out = StringIO()

    call_command("rebuild_online_state", stdout=out)

    assert recent(clean_redis) == ["a", "x"] and recent(clean_redis, "session:s1") == []
    assert out.getvalue() == "1 users, 2 items, 0 item x placement records\n"


def test_the_command_leaves_items_or_users_alone(api_client, catalog, clean_redis):
    api_client.post("/api/v1/events", event("e1", "a", ago(hours=3), type="purchase"), format="json")
    drain()
    clean_redis.flushdb()
    users_only, items_only = StringIO(), StringIO()

    call_command("rebuild_online_state", "--users-only", stdout=users_only)
    call_command("rebuild_online_state", "--items-only", stdout=items_only)

    assert users_only.getvalue() == "1 users, 0 items, 0 item x placement records\n"
    assert items_only.getvalue() == "0 users, 1 items, 0 item x placement records\n"
