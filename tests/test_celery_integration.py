"""A real Celery worker, on the real broker, runs a real task against the test database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from graph_app.models import Item
from signals_app.tasks import popularity_refresh_task
from tests.embedded_test_env import PROJECT_ROOT
from tests.factories import EventFactory, ItemFactory
from tests.integration_helpers import child_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


@pytest.fixture
def celery_worker_process():
    celery = Path(sys.executable).parent / "celery"
    process = subprocess.Popen(
        [str(celery), "-A", "config", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=PROJECT_ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    yield process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def test_worker_refreshes_popularity(celery_worker_process):
    ItemFactory(external_id="hit")
    ItemFactory(external_id="miss")
    EventFactory(item_id="hit", type="purchase")

    result = popularity_refresh_task.delay()

    assert result.get(timeout=60) == {"items": 1, "top_item": "hit"}
    assert Item.objects.get(external_id="hit").popularity > 7.9
    assert Item.objects.get(external_id="miss").popularity == 0
