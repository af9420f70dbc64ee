"""Items edited in the admin reach Redis like API upserts: the admin writes through graph_app.services."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from graph_app.models import Entity, Item, Shopper
from graph_app.online import unpack_static
from graph_app.services import EntityRef, ItemInput, item_upsert
from graph_app.state.models import Event
from personalization import redis_keys
from signals_app.consumer import events_drain_all
from signals_app.services import events_ingest

pytestmark = pytest.mark.django_db


@pytest.fixture
def mug(django_capture_on_commit_callbacks) -> Item:
    with django_capture_on_commit_callbacks(execute=True):
        return item_upsert(
            data=ItemInput(
                external_id="mug",
                title="Mug",
                category="kitchen",
                in_stock=True,
                entities=(EntityRef(kind="brand", external_id="acme"),),
            )
        ).item


def _change_form_data(admin_client, item: Item) -> dict[str, Any]:
    """What the change page would post back untouched: the item's fields and its inline's forms."""
    page = admin_client.get(reverse("admin:graph_app_item_change", args=[item.pk]))
    forms = [page.context["adminform"].form]
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        forms += [formset.management_form, *formset.forms]
    data: dict[str, Any] = {}
    for form in forms:
        for bound in form:
            value = bound.value()
            if value is True:
                data[bound.html_name] = "on"
            elif value not in (None, False):
                data[bound.html_name] = value
    return data


def _static(clean_redis, item_id: str) -> tuple[float, bool, float]:
    return unpack_static(clean_redis.hget(redis_keys.CATALOG_STATIC, item_id))


def test_a_stock_change_saved_in_the_admin_reaches_the_redis_catalog(
    admin_client, clean_redis, mug, django_capture_on_commit_callbacks
):
    assert _static(clean_redis, "mug")[1] is True
    data = _change_form_data(admin_client, mug)
    del data["in_stock"]  # an unticked checkbox is not posted

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:graph_app_item_change", args=[mug.pk]), data)

    assert response.status_code == 302
    assert Item.objects.get(external_id="mug").in_stock is False
    assert _static(clean_redis, "mug")[1] is False


def test_an_entity_added_in_the_admin_reaches_the_partitions_entity_copies(
    admin_client, clean_redis, mug, django_capture_on_commit_callbacks
):
    theme = Entity.objects.create(kind="theme", external_id="retro")
    data = _change_form_data(admin_client, mug)
    data.update({"entity_links-1-entity": theme.pk, "entity_links-1-weight": "0.5", "entity_links-TOTAL_FORMS": "2"})

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:graph_app_item_change", args=[mug.pk]), data)

    assert response.status_code == 302
    for partition in redis_keys.partitions():
        assert (
            clean_redis.hget(redis_keys.catalog_entities(partition), "mug")
            == b"category:kitchen|brand:acme|theme:retro"
        )
    assert sorted(mug.entity_links.values_list("entity__external_id", "weight")) == [("acme", 1.0), ("retro", 0.5)]


def test_an_item_deleted_in_the_admin_leaves_the_redis_catalog(
    admin_client, clean_redis, mug, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:graph_app_item_delete", args=[mug.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Item.objects.exists()
    assert clean_redis.hget(redis_keys.CATALOG_STATIC, "mug") is None


def test_an_item_added_in_the_admin_reaches_the_redis_catalog(
    admin_client, clean_redis, django_capture_on_commit_callbacks
):
    data = {"external_id": "bowl", "title": "Bowl", "price": "3.50", "in_stock": "on", "attributes": "{}"}
    data.update({"entity_links-TOTAL_FORMS": "0", "entity_links-INITIAL_FORMS": "0"})

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:graph_app_item_add"), data)

    assert response.status_code == 302
    bowl = Item.objects.get(external_id="bowl")
    assert response.url == reverse("admin:graph_app_item_changelist")
    assert LogEntry.objects.get().object_id == str(bowl.pk)
    assert bowl.embedding_source == "content"
    price, in_stock, _created_at = _static(clean_redis, "bowl")
    assert (price, in_stock) == (3.5, True)
    assert clean_redis.hget(redis_keys.CATALOG_VECTORS, "bowl") is not None


def test_the_erase_action_erases_the_shopper_and_the_history_records_it_without_naming_it(admin_client, clean_redis):
    events_ingest(raw_events=[{"event_id": "e-1", "type": "view", "user_id": "ada-q7", "item_id": "mug"}])
    events_drain_all()
    shopper = Shopper.objects.get(external_id="ada-q7")
    changelist = reverse("admin:graph_app_shopper_changelist")

    response = admin_client.post(changelist, {"action": "erase", "_selected_action": [shopper.pk]}, follow=True)

    assert response.status_code == 200
    assert not Shopper.objects.exists()
    assert not Event.objects.exists()
    assert clean_redis.exists(redis_keys.user_recent_items("ada-q7")) == 0
    entry = LogEntry.objects.get(object_id=str(shopper.pk))
    assert (entry.action_flag, entry.object_repr) == (3, f"user #{shopper.pk} (erased)")  # 3: a deletion
    assert entry.change_message.startswith("Erased: 1 shoppers, 0 sessions, 1 events, 0 impressions")
    assert "ada-q7" not in entry.object_repr + entry.change_message
    # Deleting the row alone is no longer offered: it would leave the shopper's data behind.
    other = Shopper.objects.create(external_id="bob-q7")
    assert admin_client.get(reverse("admin:graph_app_shopper_delete", args=[other.pk])).status_code == 403
