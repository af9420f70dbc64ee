"""The console's preview in a real browser (headless Chromium) against the real run command: log in, preview a
user's home shelf, add an unsaved pin and see the "with the unsaved edit" column change while "served now" does not,
and nothing is saved."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from graph_app.online import catalog_online_rebuild
from personalization import redis_keys
from surface_app.models import BusinessRule, Placement
from tests.factories import ItemFactory
from tests.integration_helpers import (
    BROWSER_TEST_PASSWORD,
    CHROMIUM,
    admin_log_in,
    chromium_launch,
    csp_violations_watch,
    platform_running,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]
SERVED = "#column-served tr.preview-item"
EDITED = "#column-edited tr.preview-item"
CATALOG = ["anchor", "twin", "cousin", "stranger", "tea"]


def test_an_unsaved_pin_changes_the_edited_column_only(tmp_path, clean_redis):
    from playwright.sync_api import sync_playwright

    for index, name in enumerate(CATALOG):
        vector = [0.0] * 64
        vector[0], vector[1] = 1.0, index * 0.3
        ItemFactory(external_id=name, title=name.title(), category="mugs", price="4.50", embedding=vector)
    catalog_online_rebuild()
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "anchor")
    Placement.objects.create(name="home", size=3)
    staff = get_user_model().objects.create_user("merchandiser", password=BROWSER_TEST_PASSWORD, is_staff=True)
    staff.user_permissions.add(
        Permission.objects.get(content_type__app_label="surface_app", codename="view_businessrule")
    )
    with platform_running(tmp_path) as (port, _):
        with sync_playwright() as playwright:
            browser = chromium_launch(playwright)
            page = browser.new_page()
            csp_violations = csp_violations_watch(page)  # the page's policy blocks nothing it needs
            admin_log_in(page, f"http://127.0.0.1:{port}", "merchandiser", "/admin/console/preview/")
            page.wait_for_selector("#preview-form")

            # The merchandiser previews u1's home shelf as it is served now.
            page.select_option("#id_placement", "home")
            page.fill("#id_user_id", "u1")
            page.click("#preview-submit")
            page.wait_for_selector(SERVED)
            served_before = page.locator(SERVED).evaluate_all("rows => rows.map(r => r.dataset.itemId)")
            edited_before = page.locator(EDITED).evaluate_all("rows => rows.map(r => r.dataset.itemId)")

            # Then pins an item the shelf does not show, without saving the rule, and previews again.
            pinned = next(name for name in CATALOG[1:] if name not in served_before)
            page.select_option("#id_rule-kind", "pin")
            page.fill("#id_rule-name", "Spring promo")
            page.fill("#id_rule-item_ids", pinned)
            page.fill("#id_rule-slot", "1")
            page.click("#preview-submit")
            page.wait_for_selector(f"{EDITED}[data-item-id='{pinned}'][data-slot='1']")
            served_after = page.locator(SERVED).evaluate_all("rows => rows.map(r => r.dataset.itemId)")
            edited_after = page.locator(EDITED).evaluate_all(
                "rows => rows.map(r => [r.dataset.itemId, r.dataset.change])"
            )
            removed_by_edit = page.locator("#column-edited .preview-missing li").evaluate_all(
                "items => items.map(i => i.dataset.itemId)"
            )
            rules_of_pinned = page.locator(f"{EDITED}[data-item-id='{pinned}'] td.rules").inner_text()
            browser.close()
        assert csp_violations == []
        assert len(served_before) == 3, served_before
        assert edited_before == served_before  # no edit yet: both columns agree
        assert served_after == served_before  # "served now" does not move
        assert edited_after[0] == [pinned, "new"], edited_after
        assert [item_id for item_id, _ in edited_after[1:]] == served_before[:2], edited_after
        assert removed_by_edit == served_before[2:], removed_by_edit
        assert rules_of_pinned.strip() == "pin:Spring promo"
        assert not BusinessRule.objects.exists()  # a preview saves nothing
