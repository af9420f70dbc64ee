from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from graph_app.state.custom_types import custom_event_type_save
from graph_app.state.event_types import custom_event_types_forget
from graph_app.state.models import CustomEventType
from tests.signals_app.helpers import online_popularity

pytestmark = pytest.mark.django_db


def test_registered_custom_type_is_accepted_with_its_weight(api_client, django_capture_on_commit_callbacks):
    event = {"event_id": "c1", "type": "wishlist_view", "user_id": "u", "item_id": "i1"}
    assert api_client.post("/api/v1/events", event, format="json").json()["rejected"] == 1

    with django_capture_on_commit_callbacks(execute=True):
        custom_event_type_save(event_type=CustomEventType(name="wishlist_view", popularity_weight=2.5, needs_item=True))
    custom_event_types_forget()  # other processes see it within CUSTOM_TYPES_REFRESH_SECONDS

    response = api_client.post("/api/v1/events", event, format="json").json()

    assert (response["accepted"], response["rejected"]) == (1, 0)
    assert online_popularity()["i1"] == pytest.approx(2.5, rel=1e-4)
    missing_item = api_client.post(
        "/api/v1/events", {"event_id": "c2", "type": "wishlist_view", "user_id": "u"}, format="json"
    ).json()
    assert missing_item["errors"] == [
        {"index": 0, "field": "item_id", "message": "Required for 'wishlist_view' events."}
    ]


def test_custom_type_cannot_shadow_a_built_in_one():
    with pytest.raises(ValidationError) as error:
        custom_event_type_save(event_type=CustomEventType(name="purchase"))
    assert "name" in error.value.message_dict


def test_admin_registers_a_custom_type(admin_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/graph_app/customeventtype/add/",
            {"name": "coupon_applied", "description": "", "popularity_weight": "0", "needs_item": ""},
        )
    assert response.status_code == 302
    assert CustomEventType.objects.filter(name="coupon_applied", needs_item=False).exists()

    shadow = admin_client.post("/admin/graph_app/customeventtype/add/", {"name": "view", "popularity_weight": "0"})
    assert shadow.status_code == 200
    assert "built-in event type" in shadow.content.decode()
