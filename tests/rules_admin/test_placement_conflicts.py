"""A placement's page warns of the rules and caps that defeat each other, and its rules table says which lose."""

from __future__ import annotations

import re

import pytest

from rules_admin.selectors import placement_rules_in_order
from surface_app import configuration
from surface_app.conflicts import placement_conflicts
from surface_app.models import BusinessRule, FrequencyCap, Placement
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def home():
    ItemFactory(external_id="tea", title="Green tea", category="drinks", attributes={"caffeine": True})
    ItemFactory(external_id="mug", title="Mug", category="mugs")
    home = Placement.objects.create(name="home", size=6)
    configuration.rule_save(
        rule=BusinessRule(name="Tea promo", kind="pin", placement=home, item_ids=["tea"], slot=1, caps_apply=True)
    )
    configuration.rule_save(
        rule=BusinessRule(name="Mug promo", kind="pin", placement=home, item_ids=["mug"], slot=2, campaign="Mugs")
    )
    configuration.rule_save(
        rule=BusinessRule(name="No caffeine", kind="filter",
                          condition={"field": "attributes.caffeine", "op": "eq", "value": True})
    )  # fmt: skip
    configuration.cap_save(cap=FrequencyCap(name="Once a day", scope="item", max_impressions=1))
    return home


def states(page: str) -> dict[str, str]:
    """Rule name -> its state, from the rules table."""
    rows = re.findall(r"<tr class='rule-row'>(.*?)</tr>", page)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    return {re.sub(r"<[^>]+>", "", row[2]): row[7] for row in cells}


def test_the_rules_table_says_which_rules_lose_and_to_what(home):
    rows = placement_rules_in_order(placement=home, conflicts=placement_conflicts(placement=home))

    assert [(row.name, row.state, row.defeated) for row in rows] == [
        ("No caffeine", "serving", False),
        ("Mug promo", "serving", False),  # not opted in: the cap counts it but never removes it
        ("Tea promo", "serving, but removed by filter 'No caffeine'; removed after 1 time by cap 'Once a day'", True),
        ("Once a day: 1 per 86400 s (item)", "serving", False),
    ]


def test_the_placement_page_warns_of_each_conflict_naming_the_rules_and_the_winner(merchandiser_client, home):
    tea_pin = BusinessRule.objects.get(name="Tea promo")
    cap = FrequencyCap.objects.get()

    page = merchandiser_client.get(f"/admin/surface_app/placement/{home.pk}/change/").content.decode()

    warnings = re.findall(r'<li class="warning rule-conflict" data-kind="([a-z_]+)">(.*?)</li>', page)
    assert [kind for kind, _ in warnings] == ["pin_filtered", "pin_capped"]
    filtered, capped = (text for _, text in warnings)
    assert filtered.startswith(
        "Filter &#x27;No caffeine&#x27; removes tea (Green tea), which pin &#x27;Tea promo&#x27; puts at slot 1: the "
        "filter wins"
    )
    assert capped.startswith("Cap &#x27;Once a day&#x27; removes tea (Green tea), pinned by pin &#x27;Tea promo&#x27;")
    assert f'<a href="/admin/surface_app/frequencycap/{cap.pk}/change/">' in capped
    assert f'<a href="/admin/surface_app/businessrule/{tea_pin.pk}/change/">' in capped
    assert states(page)["Tea promo"].startswith("serving, but removed by filter")
    assert page.index('id="rule-conflicts"') < page.index('name="name"')  # above the placement's own fields


def test_a_placement_without_conflicts_says_so(merchandiser_client):
    quiet = configuration.placement_save(placement=Placement(name="quiet", size=4))

    page = merchandiser_client.get(f"/admin/surface_app/placement/{quiet.pk}/change/").content.decode()

    assert "None: every rule and cap does what it says." in page
    assert 'class="warning rule-conflict"' not in page


def test_the_pin_form_offers_the_opt_in_to_caps(merchandiser_client, home):
    tea_pin = BusinessRule.objects.get(name="Tea promo")

    page = merchandiser_client.get(f"/admin/surface_app/pinrule/{tea_pin.pk}/change/").content.decode()

    assert re.search(r'<input type="checkbox" name="caps_apply"[^>]* checked', page)
    assert "Frequency caps apply to this pin" in page
