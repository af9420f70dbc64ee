"""Helpers for tests that start real processes against the test servers."""

from __future__ import annotations

import os
import shutil

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
