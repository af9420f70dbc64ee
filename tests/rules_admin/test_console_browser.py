"""The console in a real browser (headless Chromium) against the real run command: a merchandiser edits a rule in
the admin, then restores the earlier version from its history in one click; the stored rule after each step."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from rules_admin.roles import MERCHANDISER
from surface_app import configuration
from surface_app.models import BusinessRule, Placement
from tests.integration_helpers import (
    BROWSER_TEST_PASSWORD,
    CHROMIUM,
    admin_log_in,
    chromium_launch,
    platform_running,
)
from tests.rules_admin.console_users import console_user

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]


def stored(rule_id: int) -> tuple[str, float]:
    """The rule as stored, read on another thread (Playwright's sync API runs an event loop on this one, where
    Django refuses database calls)."""

    def read() -> tuple[str, float]:
        try:
            rule = BusinessRule.objects.get(pk=rule_id)
            return rule.name, rule.factor
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(read).result()


def test_a_merchandiser_edits_a_rule_then_reverts_it_from_its_history(tmp_path, django_user_model):
    from playwright.sync_api import sync_playwright

    home = Placement.objects.create(name="home", size=10)
    rule = configuration.rule_save(rule=BusinessRule(name="Mugs up", kind="boost", placement=home, factor=2.0))
    user = console_user(django_user_model, "merch", MERCHANDISER)
    user.set_password(BROWSER_TEST_PASSWORD)
    user.save()
    with platform_running(tmp_path) as (port, _):
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as playwright:
            browser = chromium_launch(playwright)
            page = browser.new_page()
            admin_log_in(page, base, "merch", f"/admin/surface_app/businessrule/{rule.pk}/change/")

            page.wait_for_selector("#id_factor")
            page.fill("#id_factor", "5")
            page.fill("#id_name", "Mugs way up")
            page.click("input[name=_continue]")
            page.wait_for_selector(".messagelist .success")
            edited = stored(rule.pk)

            page.goto(f"{base}/admin/surface_app/businessrule/{rule.pk}/history/")
            assert page.locator("button.revert-version").count() == 1  # the earlier version only
            assert "merch" in page.locator("#change-history").inner_text()
            page.click("button.revert-version")
            page.wait_for_selector(".messagelist .success")
            message = page.locator(".messagelist .success").inner_text()
            shown_factor = page.input_value("#id_factor")
            reverted = stored(rule.pk)
            browser.close()
        assert edited == ("Mugs way up", 5.0)
        assert reverted == ("Mugs up", 2.0)
        assert message.startswith("Reverted to the version of ") and shown_factor == "2.0"
        assert [(h.history_type, h.history_user and h.history_user.username) for h in
                rule.history.order_by("history_date")] == [("+", None), ("~", "merch"), ("~", "merch")]  # fmt: skip
