"""A merchandiser starts a holdout in a real browser (headless Chromium) against the real run command: from the
experiments list, the holdout preset, a placement, "Start now"; the experiment's page shows its verdict and the
list shows it running."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from rules_admin.roles import MERCHANDISER, roles_sync
from surface_app.experiments.models import Experiment
from surface_app.models import Placement
from tests.integration_helpers import BROWSER_TEST_PASSWORD, CHROMIUM, admin_log_in, chromium_launch, platform_running

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]


def test_a_merchandiser_starts_a_holdout_and_sees_it_listed(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    Placement.objects.create(name="home", size=4)
    Placement.objects.create(name="cart", size=2)
    roles_sync(apps=apps)  # a transactional test's flush emptied the groups
    merchandiser = get_user_model().objects.create_user("merch", password=BROWSER_TEST_PASSWORD, is_staff=True)
    merchandiser.groups.add(Group.objects.get(name=MERCHANDISER))
    with platform_running(tmp_path) as (port, _), sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        admin_log_in(page, f"http://127.0.0.1:{port}", "merch", "/admin/console/experiments/")
        expect(page.locator("#no-experiments")).to_be_visible()

        page.click("#holdout-link")
        page.select_option("#id_placement", "cart")
        page.click("#start-now")

        expect(page.locator("#verdict")).to_contain_text("No difference yet")
        expect(page.locator("#content-main")).to_have_attribute("data-status", "running")
        expect(page.locator("#stop")).to_be_visible()
        page.click(".breadcrumbs a[href='/admin/console/experiments/']")
        row = page.locator("#experiments tbody tr")
        expect(row).to_have_count(1)
        expect(row).to_have_attribute("data-status", "running")
        expect(row).to_contain_text("personalized (90), holdout (10)")
        browser.close()

    experiment = Experiment.objects.get()
    assert (experiment.placement.name, experiment.status, experiment.primary_metric) == ("cart", "running", "rpm")
    assert [variant["treatment"]["kind"] for variant in experiment.variants] == ["current", "popularity"]
