"""A placement's page in a real browser (headless Chromium) against the real run command: a merchandiser opens a
placement where a cap defeats a pin that opted in to caps and a filter defeats another pin, and sees both warnings
naming the rules and the winner, and the rules table saying which pins lose."""

from __future__ import annotations

import re

import pytest

from rules_admin.roles import MERCHANDISER
from surface_app import configuration
from surface_app.models import BusinessRule, FrequencyCap, Placement
from tests.factories import ItemFactory
from tests.integration_helpers import (
    BROWSER_TEST_PASSWORD,
    CHROMIUM,
    admin_log_in,
    chromium_launch,
    csp_violations_watch,
    platform_running,
)
from tests.rules_admin.console_users import console_user

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]


def test_a_placement_page_warns_of_a_cap_and_a_filter_that_defeat_pins(tmp_path, django_user_model):
    from playwright.sync_api import expect, sync_playwright

    ItemFactory(external_id="tea", title="Green tea", category="drinks", attributes={"caffeine": True})
    ItemFactory(external_id="mug", title="Blue mug", category="mugs")
    home = Placement.objects.create(name="home", size=6)
    save = configuration.rule_save
    save(rule=BusinessRule(name="Tea promo", kind="pin", placement=home, item_ids=["tea"], slot=1, campaign="Tea"))
    save(rule=BusinessRule(name="Mug of the week", kind="pin", placement=home, item_ids=["mug"], slot=2,
                           caps_apply=True))  # fmt: skip
    save(rule=BusinessRule(name="No caffeine", kind="filter",
                           condition={"field": "attributes.caffeine", "op": "eq", "value": True}))  # fmt: skip
    cap = configuration.cap_save(cap=FrequencyCap(name="Once a day", scope="item", max_impressions=1))
    user = console_user(django_user_model, "merch", MERCHANDISER)
    user.set_password(BROWSER_TEST_PASSWORD)
    user.save()
    with platform_running(tmp_path) as (port, _), sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        page = browser.new_page()
        csp_violations = csp_violations_watch(page)
        admin_log_in(page, f"http://127.0.0.1:{port}", "merch", f"/admin/surface_app/placement/{home.pk}/change/")

        warnings = page.locator("#rule-conflicts li.rule-conflict")
        expect(warnings).to_have_count(2)
        filtered = page.locator("#rule-conflicts li.rule-conflict[data-kind='pin_filtered']")
        expect(filtered).to_contain_text(
            "Filter 'No caffeine' removes tea (Green tea), which pin 'Tea promo' puts at slot 1: the filter wins"
        )
        expect(filtered.get_by_role("link")).to_have_text(["filter 'No caffeine'", "pin 'Tea promo'"])
        capped = page.locator("#rule-conflicts li.rule-conflict[data-kind='pin_capped']")
        expect(capped).to_contain_text(
            "Cap 'Once a day' removes mug (Blue mug), pinned by pin 'Mug of the week', once a shopper has seen it "
            "1 time within a day: the cap wins"
        )

        # The rules table no longer says plain "serving" for the pins that lose.
        def state(rule_name: str):
            row = page.locator("#rules-in-order tr.rule-row").filter(has=page.get_by_role("link", name=rule_name))
            return row.locator("td.rule-state")

        expect(state("Tea promo")).to_have_text("serving, but removed by filter 'No caffeine'")
        expect(state("Tea promo")).to_have_class(re.compile(r"\brule-defeated\b"))
        expect(state("Mug of the week")).to_have_text("serving, but removed after 1 time by cap 'Once a day'")
        expect(state("No caffeine")).to_have_text("serving")

        # The warning's link opens the cap that wins.
        capped.get_by_role("link", name="cap 'Once a day'").click()
        expect(page).to_have_url(re.compile(rf"/admin/surface_app/frequencycap/{cap.pk}/change/$"))
        expect(page.locator("#id_name")).to_have_value("Once a day")
        browser.close()
    assert csp_violations == []
