"""Helpers for tests that start real processes against the test servers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection


def test_database_url() -> str:
    """A URL for the database the tests run on (pytest-django's test_* database), for child processes."""
    config = connection.settings_dict
    user = config["USER"] or "postgres"
    password = f":{config['PASSWORD']}" if config["PASSWORD"] else ":"
    host = config["HOST"]
    if host.startswith("/"):
        return f"postgresql://{user}{password}@/{config['NAME']}?host={host}"
    port = f":{config['PORT']}" if config["PORT"] else ""
    return f"postgresql://{user}{password}@{host}{port}/{config['NAME']}"


def child_env(**overrides: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        **overrides,
    }


# Debian's Chromium, driven by Playwright in the browser tests (they skip when it is not installed). Without the
# background-networking flags it keeps trying the network, which this machine refuses.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]  # fmt: skip


# The password the browser tests give their console users.
BROWSER_TEST_PASSWORD = "browser-test-pw"


# What a browser test waits for at most: generous bounds, not timings (a busy machine renders slowly). Playwright's
# own defaults are 5 s for `expect` and 30 s for actions.
BROWSER_WAIT_MS = 60_000


def chromium_launch(playwright: Any) -> Any:
    """Debian's Chromium, headless, through Playwright, with waits bounded by BROWSER_WAIT_MS."""
    from playwright.sync_api import expect

    expect.set_options(timeout=BROWSER_WAIT_MS)
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    for name in ("new_page", "new_context"):  # a page or a context: both take a default timeout
        browser.__dict__[name] = _bounded(getattr(browser, name))
    return browser


def _bounded(make: Any) -> Any:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        made = make(*args, **kwargs)
        made.set_default_timeout(BROWSER_WAIT_MS)
        return made

    return bounded


def csp_violations_watch(page: Any) -> list[str]:
    """The Content-Security-Policy violations Chromium reports on the page's console (a blocked load or script),
    collected as they happen: a test asserts the list stays empty."""
    violations: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    return violations


def admin_log_in(page: Any, base_url: str, username: str, next_path: str) -> None:
    """Log in through the admin's login form (password BROWSER_TEST_PASSWORD), then go on to `next_path`."""
    page.goto(f"{base_url}/admin/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", BROWSER_TEST_PASSWORD)
    page.click("input[type=submit]")


@contextmanager
def platform_running(data_dir: Path, *, wait_for_websockets: bool = False) -> Iterator[tuple[int, int]]:
    """`manage.py run_platform --no-demo` on free ports against the test servers, ready to serve; yields (HTTP
    port, WebSocket port) and stops it with Ctrl-C (SIGINT) afterwards, as a user would."""
    from tests.test_run_platform import _free_port, _wait_for

    port, ws_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_platform", "--no-demo", "--port", str(port), "--ws-port", str(ws_port),
         "--web-workers", "1"],
        cwd=Path(__file__).resolve().parent.parent, env=child_env(PERSONALIZATION_DATA_DIR=str(data_dir)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        _wait_for(f"http://127.0.0.1:{port}/readyz", deadline)
        if wait_for_websockets:
            _wait_for(f"http://127.0.0.1:{ws_port}/healthz", deadline)
        yield port, ws_port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def replica_replay_wait(*, primary_url: str, replica_url: str, timeout: float = 30.0) -> None:
    """Wait until the streaming replica has replayed everything the primary had written when this was called."""
    import psycopg

    with psycopg.connect(primary_url, autocommit=True) as primary:
        target = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + timeout
    with psycopg.connect(replica_url, autocommit=True) as replica:
        while not replica.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica did not replay up to {target} within {timeout} s")
            time.sleep(0.02)
