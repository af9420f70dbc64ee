"""Event validation (signals_app.validation): timestamps from 1970 to five minutes ahead."""

from __future__ import annotations

import pytest

from signals_app.consumer import events_drain_all
from signals_app.models import Event
from tests.signals_app.helpers import stream_lengths

pytestmark = pytest.mark.django_db


def view(event_id: str, **overrides):
    return {"event_id": event_id, "type": "view", "user_id": "u1", "item_id": "sku-1", **overrides}


@pytest.mark.parametrize(
    "timestamp", ["0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z", -1, "9999-12-31T23:59:59-14:00"]
)
def test_a_timestamp_before_1970_or_far_ahead_is_rejected_naming_timestamp(api_client, timestamp):
    response = api_client.post("/api/v1/events", view("odd-time", timestamp=timestamp), format="json")

    assert response.status_code == 202
    assert (response.json()["accepted"], response.json()["errors"][0]["field"]) == (0, "timestamp")
    assert stream_lengths() == 0


def test_the_first_second_of_1970_is_accepted(api_client):
    response = api_client.post("/api/v1/events", view("epoch", timestamp="1970-01-01T00:00:00Z"), format="json")

    assert response.json()["accepted"] == 1
    events_drain_all()
    assert Event.objects.get(event_id="epoch").occurred_at.year == 1970
