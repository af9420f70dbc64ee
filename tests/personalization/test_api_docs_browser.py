"""The interactive API docs (Swagger UI) in a real browser (headless Chromium): anyone, without a login, sees every
operation and the Authorize button for the API key, under the page's Content-Security-Policy, which blocks nothing
the page needs."""

from __future__ import annotations

import pytest

from tests.integration_helpers import (
    CHROMIUM,
    chromium_launch,
    csp_violations_watch,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]


def test_the_docs_render_every_operation_without_a_login_under_the_content_security_policy(live_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        page = browser.new_page()
        csp_violations = csp_violations_watch(page)  # the page's policy blocks nothing it needs
        policies: list[str] = []
        page.on(
            "response",
            lambda response: (
                response.url.endswith("/api/v1/docs/")
                and policies.append(response.headers.get("content-security-policy", ""))
            ),
        )
        page.goto(f"{live_server.url}/api/v1/docs/")
        page.wait_for_selector(".opblock-summary-path")
        paths = page.locator(".opblock-summary-path").evaluate_all("nodes => nodes.map(n => n.dataset.path)")
        authorize = page.locator("button.authorize").count()
        browser.close()

    assert {"/api/v1/events", "/api/v1/recommendations", "/api/v1/users/{user_id}"} <= set(paths)
    assert authorize == 1
    assert policies and "script-src 'self' 'nonce-" in policies[0]
    assert csp_violations == []
