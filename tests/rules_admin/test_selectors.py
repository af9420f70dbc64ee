"""Each placement's page lists every rule and cap that can touch it, in the order serving applies them."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from rules_admin.selectors import placement_rules_in_order
from surface_app import configuration
from surface_app.models import BusinessRule, FrequencyCap, Placement
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


def save(**fields) -> BusinessRule:
    return configuration.rule_save(rule=BusinessRule(**fields))


@pytest.fixture
def home():
    home = Placement.objects.create(name="home", size=10, max_per_category=3)
    other = Placement.objects.create(name="cart", size=6)
    now = timezone.now()
    save(name="Pin low", kind="pin", placement=home, item_ids=["a"], slot=2, priority=1, campaign="A")
    save(name="Boost everywhere", kind="boost", factor=2.0, audience={"field": "traits.age", "op": "gte", "value": 18})
    save(name="Pin high", kind="pin", placement=home, item_ids=["b"], slot=1, priority=5, campaign="B",
         valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=1))  # fmt: skip
    ItemFactory(category="wine")  # a condition names a value the catalog has
    save(name="Minors filter", kind="filter", condition={"field": "category", "op": "eq", "value": "wine"})
    save(name="Bury old", kind="bury", placement=home, factor=3.0, priority=1)
    save(name="Blocked", kind="block", placement=home, item_ids=["x"], enabled=False)
    save(name="Elsewhere", kind="boost", placement=other, factor=2.0)
    save(name="Later", kind="boost", placement=home, factor=2.0, valid_from=now + timedelta(days=3))
    configuration.cap_save(cap=FrequencyCap(name="Thrice a day", scope="item", placement=home))
    configuration.cap_save(cap=FrequencyCap(name="Cool-down", scope="cooldown"))
    configuration.cap_save(cap=FrequencyCap(name="Cart cap", scope="item", placement=other))
    return home


def test_rules_and_caps_are_listed_in_the_order_they_apply(home):
    rows = placement_rules_in_order(placement=home)

    assert [(row.step, row.name, row.scope, row.state) for row in rows] == [
        ("1. Filters", "Blocked", "this placement", "disabled"),  # same priority: the most recent first
        ("1. Filters", "Minors filter", "every placement", "serving"),
        ("2. Boosts and buries", "Bury old", "this placement", "serving"),
        ("2. Boosts and buries", "Later", "this placement", "scheduled"),
        ("2. Boosts and buries", "Boost everywhere", "every placement", "serving"),
        ("3. Diversity", "at most 3 per category", "this placement", "serving"),
        ("4. Pins", "Pin high", "this placement", "serving"),
        ("4. Pins", "Pin low", "this placement", "serving"),
        ("5. Frequency caps", "Cool-down: no hidden or skipped item for 86400 s", "every placement", "serving"),
        ("5. Frequency caps", "Thrice a day: 3 per 86400 s (item)", "this placement", "serving"),
    ]
    assert next(row for row in rows if row.name == "Boost everywhere").audience == "traits.age gte 18"
    assert "→" in next(row for row in rows if row.name == "Pin high").validity


def test_the_placement_page_shows_them(merchandiser_client, home):
    page = merchandiser_client.get(f"/admin/surface_app/placement/{home.pk}/change/").content.decode()

    names = re.findall(r"<tr class='rule-row'><td>[^<]*</td><td>[^<]*</td><td>(?:<a [^>]*>)?([^<]*)", page)
    assert names[:3] == ["Blocked", "Minors filter", "Bury old"]
    assert len(names) == 10 and "Elsewhere" not in page
