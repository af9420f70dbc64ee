"""With DATABASE_URL and REDIS_URL set, the platform uses those servers and starts nothing of its own."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import pytest
import redis

from personalization import redis_keys
from tests.embedded_test_env import PROJECT_ROOT
from tests.integration_helpers import child_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]

EXTERNAL_REDIS_URL = "redis://127.0.0.1:6379/15"
# Every run writes under a prefix of its own and deletes only those keys: that Redis is the machine's, not ours.
RUN_PREFIX_START = "test-external-"

INGEST_SCRIPT = """
from django.conf import settings
from django.test import Client
from personalization.services import api_key_create
key = api_key_create(name="external check").raw_key
response = Client().post(
    "/api/v1/events",
    {"event_id": "external-1", "type": "view", "user_id": "external-user", "item_id": "sku-x"},
    content_type="application/json",
    HTTP_AUTHORIZATION=f"Bearer {key}",
)
from signals_app.consumer import events_drain_all
events_drain_all()
print(settings.REDIS_URL, response.status_code, response.json()["accepted"])
"""


def _external_redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.3):
            return redis.Redis.from_url(EXTERNAL_REDIS_URL, socket_timeout=0.5).ping()
    except (OSError, redis.RedisError):
        return False


@pytest.mark.skipif(not _external_redis_answers(), reason="no Redis answers on 127.0.0.1:6379")
def test_ingest_uses_the_external_redis_and_database_under_its_own_key_prefix(tmp_path):
    external = redis.Redis.from_url(EXTERNAL_REDIS_URL)
    prefix = f"{RUN_PREFIX_START}{uuid.uuid4().hex}:"
    others_before = _keys_of_others(external)
    empty_data_dir = tmp_path / "data"

    try:
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", INGEST_SCRIPT],
            cwd=PROJECT_ROOT,
            env=child_env(
                REDIS_URL=EXTERNAL_REDIS_URL, REDIS_KEY_PREFIX=prefix, PERSONALIZATION_DATA_DIR=str(empty_data_dir)
            ),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        ours = sorted(key.decode() for key in external.scan_iter(match=f"{prefix}*", count=1000))
        others_after = _keys_of_others(external)
    finally:
        _keys_delete(external, prefix)

    assert result.stdout.strip().splitlines()[-1] == f"{EXTERNAL_REDIS_URL} 202 1", result.stderr
    recent = prefix + redis_keys.user_recent_items("external-user")  # the tests' own keys have no prefix
    assert recent in ours
    assert others_after <= others_before  # nothing written outside the prefix
    assert not list(external.scan_iter(match=f"{prefix}*"))  # and every key of ours deleted
    assert not empty_data_dir.exists()  # no embedded server was started
    from graph_app.state.models import Event

    assert Event.objects.filter(event_id="external-1", user_id="external-user").exists()


def _keys_of_others(client: redis.Redis) -> set[bytes]:
    """Keys not written by a run of this test (another run's prefix may come and go meanwhile)."""
    return {key for key in client.scan_iter(count=1000) if not key.startswith(RUN_PREFIX_START.encode())}


def _keys_delete(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)
