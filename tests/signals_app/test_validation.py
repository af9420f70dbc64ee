"""Event validation (signals_app.validation): timestamps from 1970 to five minutes ahead."""

from __future__ import annotations

import pytest

from graph_app.state.models import Event
from signals_app.consumer import events_drain_all
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


@pytest.mark.parametrize("number", ["18446744073709551616", "12.5"])
def test_a_numeric_id_beyond_64_bits_or_with_a_fraction_is_refused_not_renamed(api_client, number):
    # orjson reads 2**64 as a float: its text would be "1.8446744073709552e+19", another shopper.
    body = f'{{"event_id": "e-1", "type": "view", "user_id": {number}, "item_id": "sku-1"}}'

    response = api_client.post("/api/v1/events", body, content_type="application/json")

    assert response.status_code == 202
    assert response.json()["accepted"] == 0
    assert [(error["field"], "64 bits" in error["message"]) for error in response.json()["errors"]] == [
        ("user_id", True)
    ]
    assert stream_lengths() == 0


def test_an_integer_beyond_signed_64_bits_refuses_the_request_naming_the_field(api_client):
    body = '{"event_id": "e-1", "type": "view", "user_id": 9223372036854775808, "item_id": "sku-1"}'

    response = api_client.post("/api/v1/events", body, content_type="application/json")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["user_id"]
    assert stream_lengths() == 0


def test_a_64_bit_numeric_id_is_kept_digit_for_digit(api_client):
    body = '{"event_id": "e-1", "type": "view", "user_id": 9223372036854775807, "item_id": 42}'

    assert api_client.post("/api/v1/events", body, content_type="application/json").json()["accepted"] == 1
    events_drain_all()
    event = Event.objects.get(event_id="e-1")
    assert (event.user_id, event.item_id) == ("9223372036854775807", "42")


def test_a_segment_user_id_beyond_64_bits_is_refused_naming_user_id(api_client):
    body = '{"messageId": "m-1", "userId": 18446744073709551616, "event": "Product Viewed"}'

    response = api_client.post("/api/v1/segment/v1/track", body, content_type="application/json")

    assert response.status_code == 200
    assert response.json()["accepted"] == 0
    assert [error["field"] for error in response.json()["errors"]] == ["userId"]
