"""The console dashboard in a real browser (headless Chromium) against the real run command: log in, serve a
recommendation, open the dashboard and check that its charts rendered, with one day on the axis per day of the
window and a point per placement per day."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.utils import timezone

from graph_app.state.models import Impression
from tests.factories import EventFactory, ItemFactory, ShopperFactory
from tests.integration_helpers import (
    BROWSER_TEST_PASSWORD,
    CHROMIUM,
    admin_log_in,
    chromium_launch,
    platform_running,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]
WINDOW_DAYS = 14
PER_DAY_CHARTS = ("impressions", "ctr", "add_to_cart_rate", "purchase_rate", "rpm")


def _served_history() -> None:
    """Two placements served every day of the window, home three items a day and cart one; a click on home's
    first item every other day."""
    today = timezone.now().date()
    for offset in range(WINDOW_DAYS):
        served_at = datetime.combine(today - timedelta(days=offset), datetime.min.time(), tzinfo=UTC)
        for placement, size in (("home", 3), ("cart", 1)):
            for slot in range(size):
                Impression.objects.create(
                    request_id=f"{placement}-{offset}", user_key="u:shopper-1", placement=placement,
                    item_id=f"sku-{slot}", slot=slot, served_at=served_at,
                )  # fmt: skip
        if offset % 2 == 0:
            EventFactory(
                type="click", item_id="sku-0", request_id=f"home-{offset}", attributed_placement="home",
                attributed_slot=0, occurred_at=served_at + timedelta(minutes=1),
            )  # fmt: skip


def _stored(request_id: str, timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    try:
        while not Impression.objects.filter(request_id=request_id).exists():
            assert time.monotonic() < deadline, f"the slate {request_id} was not stored within {timeout_seconds} s"
            time.sleep(0.1)
    finally:
        connection.close()  # this thread's own connection


def test_dashboard_renders_its_charts(tmp_path):
    from playwright.sync_api import sync_playwright

    for index in range(4):
        ItemFactory(external_id=f"sku-{index}", title=f"Mug {index}")
    ShopperFactory(external_id="shopper-1")
    _served_history()
    merchandiser = get_user_model().objects.create_user("merch", password=BROWSER_TEST_PASSWORD, is_staff=True)
    merchandiser.user_permissions.add(
        Permission.objects.get(content_type__app_label="graph_app", codename="view_impression")
    )
    with platform_running(tmp_path) as (port, _):
        with sync_playwright() as playwright:
            browser = chromium_launch(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            outside_requests: list[str] = []
            page.on(
                "request",
                lambda request: (
                    request.url.startswith(f"http://127.0.0.1:{port}/") or outside_requests.append(request.url)
                ),
            )
            admin_log_in(page, f"http://127.0.0.1:{port}", "merch", "/admin/console/dashboard/")
            page.wait_for_selector("svg[data-chart='impressions']")
            # A recommendation served by the web process, for the latency chart (the session works for the API).
            served = page.request.get(
                f"http://127.0.0.1:{port}/api/v1/recommendations?user_id=shopper-1&placement=home"
            )
            assert served.ok, served.text()
            # The platform's consumer stores its impressions in a moment: wait for them (bounded), so that today's
            # home CTR is the same whichever comes first, the reload or the consumer.
            # (In a thread: Playwright's loop runs in this one, and Django refuses the ORM inside a running loop.)
            with ThreadPoolExecutor(1) as waiter:
                waiter.submit(_stored, served.json()["request_id"]).result()
            page.reload()
            page.wait_for_selector("svg[data-chart='latency'] rect.bar")

            sizes = page.locator("svg.dashboard-chart").evaluate_all(
                "charts => charts.map(c => [c.dataset.chart, c.getBoundingClientRect().width,"
                " c.getBoundingClientRect().height])"
            )
            days = {chart: page.locator(f"svg[data-chart='{chart}'] g.day").count() for chart in PER_DAY_CHARTS}
            impression_points = page.locator("svg[data-chart='impressions'] g.series").evaluate_all(
                "series => series.map(s => [s.dataset.series, s.querySelectorAll('circle.point').length,"
                " s.querySelector('path').getTotalLength() > 0])"
            )
            home_ctr_heights = page.locator(
                "svg[data-chart='ctr'] g.series[data-series='home'] circle.point"
            ).evaluate_all("points => points.map(p => p.getAttribute('cy'))")
            latency_bars = page.locator("svg[data-chart='latency'] g.bar-row[data-row='total'] rect.bar").evaluate_all(
                "bars => bars.map(b => [b.dataset.measure, b.getBoundingClientRect().width])"
            )
            table_rows = page.locator("#placement-days tbody tr").count()
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            browser.close()

        charts = {chart for chart, _, _ in sizes}
        assert {*PER_DAY_CHARTS, "latency"} <= charts, sizes
        assert all(width > 100 and height > 50 for _, width, height in sizes), sizes
        assert days == dict.fromkeys(PER_DAY_CHARTS, WINDOW_DAYS), days
        assert sorted(impression_points) == [["cart", WINDOW_DAYS, True], ["home", WINDOW_DAYS, True]]
        # Home's CTR: a third on the days with a click, none on the others, half the days each; today (a day with a
        # click) also has the slate served above, so its CTR is lower than the other click days'.
        assert sorted(Counter(home_ctr_heights).values()) == [1, WINDOW_DAYS // 2 - 1, WINDOW_DAYS // 2], (
            home_ctr_heights
        )
        assert [measure for measure, _ in latency_bars] == ["p50", "p99"], latency_bars
        assert all(width > 0 for _, width in latency_bars), latency_bars
        assert table_rows == 2 * WINDOW_DAYS
        assert outside_requests == []  # no CDN: every asset comes from the platform itself
