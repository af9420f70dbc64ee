"""The console's forms refuse what would not serve as meant, with a message naming the field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from surface_app import configuration
from surface_app.models import BusinessRule, FrequencyCap, Placement
from tests.factories import ItemFactory
from tests.rules_admin.console_users import form_errors, rule_form

pytestmark = pytest.mark.django_db

RULE_ADD = "/admin/surface_app/businessrule/add/"
PIN_ADD = "/admin/surface_app/pinrule/add/"
CAP_ADD = "/admin/surface_app/frequencycap/add/"


def pin(placement: Placement | None, *, campaign: str, slot: int = 1, start=None, end=None, **fields) -> BusinessRule:
    return configuration.rule_save(
        rule=BusinessRule(name=f"{campaign} pin", kind="pin", placement=placement, item_ids=["sku-pinned"],
                          slot=slot, campaign=campaign, valid_from=start, valid_until=end, **fields)
    )  # fmt: skip


def at(month: int) -> datetime:
    return datetime(2027, month, 1, tzinfo=UTC)


def test_a_pin_beyond_the_placements_size_is_refused_on_its_slot(merchandiser_client):
    cart = Placement.objects.create(name="cart", size=6)

    response = merchandiser_client.post(RULE_ADD, rule_form(kind="pin", placement=cart.pk, item_ids="sku-1", slot="8"))

    assert form_errors(response) == {"slot": ["Slot 8 is beyond the placement 'cart', which has 6 slots."]}
    assert not BusinessRule.objects.exists()


def test_a_rule_on_an_attribute_no_item_has_is_refused_on_its_condition(merchandiser_client):
    ItemFactory(attributes={"age_restricted": True})
    condition = '{"field": "attributes.age_restricts", "op": "eq", "value": true}'

    response = merchandiser_client.post(RULE_ADD, rule_form(kind="filter", condition=condition))

    assert form_errors(response) == {
        "condition": [
            "No item in the catalog has the attribute 'age_restricts': check the spelling of attributes.<name> "
            "(a rule on an unknown attribute matches nothing)."
        ]
    }
    # Spelled right, it saves.
    response = merchandiser_client.post(
        RULE_ADD, rule_form(kind="filter", condition=condition.replace("restricts", "restricted"))
    )
    assert response.status_code == 302
    assert BusinessRule.objects.get().condition == {"field": "attributes.age_restricted", "op": "eq", "value": True}


def test_a_cap_with_a_zero_window_is_refused_on_its_window(merchandiser_client):
    response = merchandiser_client.post(
        CAP_ADD, {"name": "cap", "scope": "item", "placement": "", "max_impressions": "3", "window_seconds": "0",
                  "enabled": "on"}
    )  # fmt: skip

    assert form_errors(response) == {
        "window_seconds": ["The window must be at least one second: a cap over a zero window counts nothing."]
    }
    assert not FrequencyCap.objects.exists()


def test_overlapping_campaigns_on_one_slot_are_refused_on_the_slot(merchandiser_client):
    home = Placement.objects.create(name="home", size=10)
    pin(home, campaign="Spring", start=at(1), end=at(4))
    summer = {"name": "Summer pin", "campaign": "Summer", "placement": home.pk, "slot": "1", "item_ids": "sku-2",
              "priority": "0", "enabled": "on", "audience": "{}", "valid_from_0": "2027-03-01",
              "valid_from_1": "00:00:00", "valid_until_0": "2027-06-01", "valid_until_1": "00:00:00"}  # fmt: skip

    response = merchandiser_client.post(PIN_ADD, summer)

    assert form_errors(response) == {
        "slot": [
            "Slot 1 is already pinned by campaign 'Spring' (rule 'Spring pin', on placement 'home', from "
            "2027-01-01 00:00 until 2027-04-01 00:00) at the same time: choose another slot, change the dates so "
            "they do not overlap, or disable one of them."
        ]
    }
    # Starting when Spring ends, it saves (and is stored as a pin).
    response = merchandiser_client.post(PIN_ADD, {**summer, "valid_from_0": "2027-04-01"})
    assert response.status_code == 302
    assert BusinessRule.objects.get(campaign="Summer").kind == "pin"


def test_a_pin_without_placement_overlaps_every_placements_pins_and_one_campaign_never_conflicts_with_itself():
    home = Placement.objects.create(name="home", size=10)
    pin(None, campaign="Everywhere", slot=2)
    clash = BusinessRule(name="x", kind="pin", placement=home, item_ids=["a"], slot=2, campaign="Sale")
    same_campaign = BusinessRule(name="y", kind="pin", placement=home, item_ids=["a"], slot=2, campaign="Everywhere")
    disabled = BusinessRule(
        name="z", kind="pin", placement=home, item_ids=["a"], slot=2, campaign="Sale", enabled=False
    )

    with pytest.raises(Exception) as refused:
        configuration.rule_validate(rule=clash)
    configuration.rule_validate(rule=same_campaign)
    configuration.rule_validate(rule=disabled)

    assert "on every placement" in refused.value.message_dict["slot"][0]


def test_editing_a_pin_does_not_conflict_with_its_own_saved_version(merchandiser_client):
    home = Placement.objects.create(name="home", size=10)
    spring = pin(home, campaign="Spring", start=at(1), end=at(4))
    other = pin(home, campaign="Other", slot=5)

    configuration.rule_validate(rule=spring)
    configuration.rule_validate(rule=other)
    response = merchandiser_client.post(
        f"/admin/surface_app/pinrule/{spring.pk}/change/",
        {"name": "Spring pin", "campaign": "Spring", "placement": home.pk, "slot": "1", "item_ids": "sku-9",
         "priority": "3", "enabled": "on", "audience": "{}", "valid_from_0": "", "valid_from_1": "",
         "valid_until_0": "", "valid_until_1": ""},
    )  # fmt: skip

    assert response.status_code == 302
    spring.refresh_from_db()
    assert (spring.item_ids, spring.priority, spring.valid_from) == (["sku-9"], 3, None)


def test_fallback_lists_are_edited_as_steps_and_item_ids_one_per_line(merchandiser_client):
    ItemFactory(external_id="mug-1")
    ItemFactory(external_id="mug-2")
    home = Placement.objects.create(name="home", size=10)
    url = f"/admin/surface_app/fallbacklist/{home.pk}/change/"
    steps = {"fallbacks_0": "last_slate", "fallbacks_1": "popular", "fallbacks_2": "", "fallbacks_3": ""}

    refused = merchandiser_client.post(url, {**steps, "default_items": "mug-1\nmug-404"})
    repeated = merchandiser_client.post(url, {**steps, "fallbacks_2": "popular", "default_items": ""})
    saved = merchandiser_client.post(url, {**steps, "default_items": "mug-2\n mug-1 \n"})

    assert form_errors(refused) == {"default_items": ["Not in the catalog: mug-404."]}
    assert form_errors(repeated) == {"fallbacks": ["Each fallback once: Popular items."]}
    assert saved.status_code == 302
    home.refresh_from_db()
    assert (home.fallbacks, home.default_items) == (["last_slate", "popular"], ["mug-2", "mug-1"])
