"""The demo storefront in a real browser (headless Chromium) against the real run command: log in, see the home
shelf, click a product and watch the shelf change over the WebSocket, then click a recommendation and check that
the tracker's click carries the slate's request id and slot."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth import get_user_model

from tests.factories import ItemFactory, ShopperFactory
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
HOME_CARDS = "#shelf-home .card"


def test_demo_storefront_shelf_changes_live_after_a_click(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    for index, name in enumerate(["anchor", "twin", "cousin", "stranger"]):
        vector = [0.0] * 64
        vector[0], vector[1] = 1.0, index * 0.3
        ItemFactory(external_id=name, title=name.title(), category="mugs", price="4.50", embedding=vector)
    ShopperFactory(external_id="shopper-1")
    get_user_model().objects.create_user("staff", password=BROWSER_TEST_PASSWORD, is_staff=True)
    with platform_running(tmp_path, wait_for_websockets=True) as (port, _):
        with sync_playwright() as playwright:
            browser = chromium_launch(playwright)
            page = browser.new_page()
            home_frames: list[str] = []
            page.on(
                "websocket",
                lambda ws: (
                    "placement=home" in ws.url and ws.on("framereceived", lambda frame: home_frames.append(frame))
                ),
            )
            sent_events: list[dict] = []
            page.on(
                "request",
                lambda request: (
                    request.url.endswith("/api/v1/events")
                    and sent_events.extend(json.loads(request.post_data or "{}").get("events", []))
                ),
            )
            csp_violations = csp_violations_watch(page)  # the page's policy blocks nothing it needs
            admin_log_in(page, f"http://127.0.0.1:{port}", "staff", "/demo/")
            page.wait_for_selector("#status.live")
            # No history and no popularity yet: the home shelf explores the newest items, all four of them.
            # Playwright's own waits, not wait_for_function: the page's policy forbids the eval that polls a string.
            expect(page.locator(HOME_CARDS)).to_have_count(4)
            assert page.locator("#products .card").count() == 4
            first_shelf = page.locator(HOME_CARDS).evaluate_all("cards => cards.map(c => c.dataset.source)")

            # The shopper opens a product from the grid: the tracker sends a view, and the home shelf is pushed
            # again, now led by what is similar to the product they viewed.
            page.click("#products .card[data-item-id='anchor']")
            page.wait_for_selector(f"{HOME_CARDS}[data-source='similar']")
            home_items = page.locator(HOME_CARDS).evaluate_all("cards => cards.map(c => c.dataset.itemId)")
            assert page.locator("#product-title").inner_text() == "Anchor"
            # The product page's shelf is served with the product as context.
            page.wait_for_selector("#shelf-product_page .card")
            similar = page.locator("#shelf-product_page .card").evaluate_all(
                "cards => cards.map(c => c.dataset.itemId)"
            )

            # A click on a recommendation is attributed to the slate it came from.
            first = page.locator(HOME_CARDS).first
            clicked, request_id = (
                first.get_attribute("data-item-id"),
                page.get_attribute("#shelf-home", "data-request-id"),
            )
            with page.expect_request(
                lambda request: request.url.endswith("/api/v1/events") and '"click"' in (request.post_data or "")
            ):  # the tracker's request, after the click
                first.click()
            expect(page.locator("#product-title")).to_have_text(re.compile(f"^{re.escape(clicked)}$", re.I))
            browser.close()
        assert csp_violations == []
        assert first_shelf == ["fresh"] * 4, first_shelf
        assert {"cousin", "stranger", "twin"} <= set(home_items), home_items
        assert len(home_frames) >= 2, home_frames  # the shelf on connect, then the one pushed after the view
        assert "anchor" not in similar and similar, similar
        views = [event for event in sent_events if event["type"] == "view"]
        assert views[0]["item_id"] == "anchor" and views[0]["user_id"] == "shopper-1", sent_events
        clicks = [event for event in sent_events if event["type"] == "click"]
        assert [(c["item_id"], c["placement"], c["request_id"], c["slot"]) for c in clicks] == [
            (clicked, "home", request_id, 0)
        ], sent_events
