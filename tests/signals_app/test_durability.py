"""Nothing answered with 202 is lost when the web process, the consumer or PostgreSQL dies: each case really
kills or stops the process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from graph_app.state.models import Event
from personalization import embedded
from personalization.services import api_key_create
from signals_app.consumer import CRASH_AFTER_READ_ENV, events_drain_all
from tests.embedded_test_env import PROJECT_ROOT
from tests.integration_helpers import child_env
from tests.signals_app.helpers import stream_lengths
from tests.test_run_platform import _free_port, _wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
BIN = Path(sys.executable).parent


def _post_events(port: int, key: str, events: list[dict]) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/events",
        data=json.dumps({"events": events}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return json.loads(response.read())


def _gunicorn(port: int, env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(BIN / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    _wait_for(f"http://127.0.0.1:{port}/healthz", time.monotonic() + 30)
    return process


def _events(prefix: str, count: int) -> list[dict]:
    return [{"event_id": f"{prefix}-{n}", "type": "view", "user_id": f"u{n % 7}", "item_id": "i"} for n in range(count)]


def test_killing_the_web_process_loses_nothing_it_accepted():
    key = api_key_create(name="durability").raw_key
    port = _free_port()
    web = _gunicorn(port, child_env())
    accepted = sum(_post_events(port, key, _events(f"w{batch}", 50))["accepted"] for batch in range(4))

    os.killpg(web.pid, signal.SIGKILL)
    web.wait(timeout=10)
    while events_drain_all().read:
        pass

    assert accepted == 200
    assert Event.objects.filter(event_id__startswith="w").count() == 200


def test_a_consumer_killed_after_reading_leaves_its_entries_to_another(settings):
    from signals_app.services import events_ingest

    events_ingest(raw_events=_events("k", 120))
    script = "from signals_app.consumer import events_drain_all; events_drain_all()"
    crashed = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=PROJECT_ROOT, env=child_env(**{CRASH_AFTER_READ_ENV: "1"}), capture_output=True, timeout=60,
    )  # fmt: skip
    assert crashed.returncode == 137  # died holding a batch it had read but not acknowledged
    assert not Event.objects.exists()

    settings.EVENT_RECLAIM_IDLE_MS = 0
    report = events_drain_all()
    while events_drain_all().read:
        pass

    assert report.reclaimed > 0
    assert Event.objects.filter(event_id__startswith="k").count() == 120
    assert stream_lengths() == 0


def test_ingest_keeps_accepting_while_postgres_is_down_and_the_log_catches_up(tmp_path):
    database_url = embedded.ensure_postgres(tmp_path)
    try:
        # No key cache: every request re-verifies, so the outage is met by the stale-if-error path at once.
        env = child_env(
            DATABASE_URL=database_url, PERSONALIZATION_DATA_DIR=str(tmp_path / "data"), API_KEY_CACHE_SECONDS="0"
        )
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=PROJECT_ROOT, env=env, check=True, timeout=180
        )
        key = subprocess.run(
            [sys.executable, "manage.py", "create_api_key", "outage"],
            cwd=PROJECT_ROOT, env=env, check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        port = _free_port()
        web = _gunicorn(port, env)
        try:
            before = _post_events(port, key, _events("before", 10))  # also caches the verified key
            embedded.stop_postgres(tmp_path)

            during = _post_events(port, key, _events("during", 30))
            drain_while_down = subprocess.run(
                [sys.executable, "manage.py", "drain_events"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                text=True, timeout=60,
            )  # fmt: skip
            assert drain_while_down.returncode != 0

            embedded.ensure_postgres(tmp_path)
            drained = subprocess.run(
                [sys.executable, "manage.py", "drain_events"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                text=True, timeout=60,
            )  # fmt: skip
        finally:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=10)
        assert (before["accepted"], during["accepted"]) == (10, 30)
        assert drained.returncode == 0, drained.stderr
        with psycopg.connect(database_url) as conn:
            stored = conn.execute(
                "SELECT count(*) FROM signals_app_event WHERE event_id LIKE 'before-%%' OR event_id LIKE 'during-%%'"
            ).fetchone()[0]
        assert stored == 40
    finally:
        embedded.stop_postgres(tmp_path)
