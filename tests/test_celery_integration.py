"""A real Celery worker, on the real broker, runs a real task against the test database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graph_app.models import ItemPopularity
from personalization import redis_keys
from signals_app.consumer import CONSUMER_GROUP
from signals_app.tasks import events_drain_task, popularity_refresh_task
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
    stored = dict(ItemPopularity.objects.values_list("item_id", "score"))
    assert stored["hit"] > 7.9 and "miss" not in stored


@pytest.fixture
def json_logging_worker():
    """A worker printing its log lines as production does (JSON, INFO), on the default queue."""
    celery = Path(sys.executable).parent / "celery"
    process = subprocess.Popen(
        [str(celery), "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO", "--queues", "celery",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=PROJECT_ROOT, env=child_env(LOG_FORMAT="json"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    yield process
    if process.poll() is None:
        process.kill()


def test_a_tasks_lines_carry_its_id_and_an_idle_drain_prints_nothing(json_logging_worker, clean_redis):
    ItemFactory(external_id="hit")
    EventFactory(item_id="hit", type="purchase")

    # One worker, one task at a time, in order: the drain (nothing to move) has run when the refresh is done. Its
    # usual expiry (10 s) could pass while a busy machine starts the worker.
    events_drain_task.apply_async(queue="celery", expires=600)
    result = popularity_refresh_task.delay()
    assert result.get(timeout=60) == {"items": 1, "top_item": "hit"}
    json_logging_worker.terminate()
    output, _ = json_logging_worker.communicate(timeout=30)

    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    refreshed = [line for line in lines if line["event"] == "signals.popularity_refreshed"]
    assert refreshed == [
        {
            "event": "signals.popularity_refreshed",
            "level": "info",
            "logger": "graph_app.state.popularity",
            "task_id": result.id,
            "task": "signals.popularity_refresh",
            "items": 1,
            "top_item": "hit",
            "timestamp": refreshed[0]["timestamp"],
        }
    ]
    succeeded = [line for line in lines if line["logger"] == "celery.app.trace"]
    assert [(line["task_id"], line["event"].split(" succeeded")[0]) for line in succeeded] == [
        (result.id, f"Task signals.popularity_refresh[{result.id}]")
    ]
    # The drain ran (it made the stream's consumer group) and not one line at INFO says so.
    assert clean_redis.xinfo_groups(redis_keys.event_stream(0))[0]["name"] == CONSUMER_GROUP.encode()
    assert not [line for line in lines if "events_drain" in json.dumps(line)]
