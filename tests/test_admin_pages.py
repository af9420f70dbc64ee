"""Every admin page a staff member can open renders (list, add where allowed, and a row's change page)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from personalization.services import api_key_create
from signals_app.services import events_ingest
from tests.factories import EntityFactory, EventFactory, ItemEntityFactory, ShopperFactory

pytestmark = pytest.mark.django_db

REGISTERED = sorted(admin.site._registry.items(), key=lambda pair: pair[0]._meta.label)


@pytest.fixture
def some_rows():
    ItemEntityFactory()
    EntityFactory()
    ShopperFactory()
    EventFactory(event_id="admin-1", request_id="r1", attributed_placement="home")
    api_key_create(name="admin page")
    events_ingest(raw_events=[{"event_id": "x", "type": "view", "user_id": "u", "item_id": "i"}])


@pytest.mark.parametrize(("model", "model_admin"), REGISTERED, ids=[model._meta.label for model, _ in REGISTERED])
def test_admin_pages_render(admin_client, admin_user, rf, some_rows, model, model_admin):
    info = (model._meta.app_label, model._meta.model_name)
    request = rf.get("/")
    request.user = admin_user

    assert admin_client.get(reverse("admin:{}_{}_changelist".format(*info))).status_code == 200
    add = admin_client.get(reverse("admin:{}_{}_add".format(*info)))
    assert add.status_code == (200 if model_admin.has_add_permission(request) else 403)
    row = model._default_manager.first()
    if row is not None:
        assert admin_client.get(reverse("admin:{}_{}_change".format(*info), args=[row.pk])).status_code == 200
