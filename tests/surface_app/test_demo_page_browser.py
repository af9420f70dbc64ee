"""The demo page in a real browser (headless Chromium) against the real run command: log in, see the shelf,
click an item, and watch the shelf update over the WebSocket."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
from django.contrib.auth import get_user_model

from tests.embedded_test_env import PROJECT_ROOT
from tests.factories import ItemFactory, ShopperFactory
from tests.integration_helpers import child_env
from tests.test_run_platform import _free_port, _wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]


def test_demo_shelf_updates_live_after_a_click(tmp_path):
    from playwright.sync_api import sync_playwright

    for index, name in enumerate(["anchor", "twin", "cousin", "stranger"]):
        vector = [0.0] * 64
        vector[0], vector[1] = 1.0, index * 0.3
        ItemFactory(external_id=name, title=name.title(), embedding=vector)
    ShopperFactory(external_id="shopper-1")
    get_user_model().objects.create_user("staff", password="browser-test-pw", is_staff=True)
    port, ws_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_platform", "--no-demo", "--port", str(port), "--ws-port", str(ws_port),
         "--web-workers", "1"],
        cwd=PROJECT_ROOT, env=child_env(PERSONALIZATION_DATA_DIR=str(tmp_path)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        _wait_for(f"http://127.0.0.1:{port}/readyz", deadline)
        _wait_for(f"http://127.0.0.1:{ws_port}/healthz", deadline)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run"],
            )  # fmt: skip
            page = browser.new_page()
            frames = []
            page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))
            page.goto(f"http://127.0.0.1:{port}/admin/login/?next=/demo/")
            page.fill("#id_username", "staff")
            page.fill("#id_password", "browser-test-pw")
            page.click("input[type=submit]")
            page.wait_for_selector("#status.live", timeout=15000)
            # No history and no popularity yet: the shelf explores the newest items, all four of them.
            page.wait_for_function("document.querySelectorAll('.card').length === 4", timeout=15000)

            page.evaluate(
                """() => fetch('/api/v1/events', {method: 'POST', credentials: 'same-origin',
                     headers: {'Content-Type': 'application/json', 'X-CSRFToken':
                               document.cookie.split('; ').find(c => c.startsWith('csrftoken=')).split('=')[1]},
                     body: JSON.stringify({event_id: 'browser-1', type: 'view', user_id: 'shopper-1',
                                           item_id: 'anchor'})})"""
            )
            # The pushed shelf leaves out what the shopper just viewed.
            page.wait_for_function("document.querySelectorAll('.card').length === 3", timeout=15000)
            titles = page.locator(".card h3").all_inner_texts()
            browser.close()
        # The run command trains a first model over these items, so the order is the model's: check membership.
        assert sorted(title.lower() for title in titles) == ["cousin", "stranger", "twin"], (titles, frames)
        assert len(frames) == 2  # the shelf on connect, then the one pushed after the event
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
