"""The API, ingest and WebSocket paths on a real Valkey cluster (three masters, a replica each), with the platform's
clients switched to it: state and streams land on the cluster, the events consumer stores them, recommendations
answer from it, live updates cross a channel layer of several hosts, and a master killed during ingest loses no
acknowledged event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from redis.cluster import RedisCluster

from graph_app.state.models import Event
from personalization import redis_keys
from personalization.embedded_cluster import (
    ensure_valkey_cluster,
    valkey_cluster_nodes_running,
)
from personalization.process_caches import process_caches_reset
from personalization.redis_client import ShaScript, get_control_redis, get_ingest_redis, get_redis
from signals_app.consumer import CONSUMER_GROUP, events_drain_all
from tests.factories import ItemFactory, unit

pytestmark = [pytest.mark.cluster, pytest.mark.django_db]

DEADLINE_SECONDS = 30.0
CLUSTER_PARTITIONS = 6  # two on each master


def _eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll until `condition` holds; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.05)


def _clients_reset() -> None:
    for getter in (get_redis, get_ingest_redis, get_control_redis):
        getter.cache_clear()
    ShaScript.forget_all()
    process_caches_reset()
    channel_layers.backends = {}


@pytest.fixture(scope="module")
def cluster_folder() -> Path:
    # The worker's cluster (the one TEST_REDIS_CLUSTER=1 uses too): started once, kept for the next run.
    folder = Path(os.environ["PERSONALIZATION_DATA_DIR"]) / "valkey-cluster"
    ensure_valkey_cluster(folder)
    return folder


@pytest.fixture
def on_cluster(settings, cluster_folder: Path) -> Iterator[RedisCluster]:
    """The platform's Redis clients, channel layer and partitions switched to the cluster for one test; each master
    flushed first."""
    nodes = ensure_valkey_cluster(cluster_folder)  # restarts a node an earlier test killed
    settings.REDIS_CLUSTER_NODES = nodes
    settings.EVENT_PARTITIONS = CLUSTER_PARTITIONS
    settings.REDIS_INGEST_REPLICAS_WAIT = 1
    settings.REDIS_INGEST_WAIT_TIMEOUT_MS = 1000
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [f"redis://{node}" for node in nodes], "prefix": "channels"},
        }
    }
    _clients_reset()
    client = get_control_redis()
    client.flushdb(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    assert isinstance(client, RedisCluster)
    yield client
    _clients_reset()  # before the settings come back: the next test's clients are the single node's


def _views(prefix: str, count: int, users: int = 12) -> list[dict[str, str]]:
    return [
        {"event_id": f"{prefix}-{n}", "type": "view", "user_id": f"{prefix}-u{n % users}", "item_id": f"sku-{n % 5}"}
        for n in range(count)
    ]


def _stream_entries(client: RedisCluster) -> dict[int, int]:
    return {p: int(client.xlen(redis_keys.event_stream(p))) for p in range(CLUSTER_PARTITIONS)}


@pytest.mark.parametrize("partitions", [3, 12])  # the cluster mode's default, and four a master
def test_partitions_spread_over_every_master(settings, on_cluster: RedisCluster, partitions: int) -> None:
    settings.EVENT_PARTITIONS = partitions

    owners = {on_cluster.get_node_from_key(redis_keys.event_stream(p)).name for p in range(partitions)}
    masters = {node.name for node in on_cluster.get_primaries()}

    assert owners == masters
    counts = [
        sum(on_cluster.get_node_from_key(redis_keys.event_stream(p)).name == master for p in range(partitions))
        for master in masters
    ]
    assert counts == [partitions // 3] * 3


def test_rest_ingest_writes_state_and_streams_on_the_cluster_and_the_consumer_stores_them(
    api_client, on_cluster: RedisCluster
) -> None:
    events = _views("rest", 60)

    response = api_client.post("/api/v1/events", {"events": events}, format="json")

    assert response.status_code == 202
    assert response.json()["accepted"] == 60
    assert on_cluster.lrange(redis_keys.user_recent_items("rest-u0"), 0, -1)
    entries = _stream_entries(on_cluster)
    assert sum(entries.values()) == 60
    # Users of several partitions, so streams on every master.
    assert {on_cluster.get_node_from_key(redis_keys.event_stream(p)).name for p, n in entries.items() if n} == {
        node.name for node in on_cluster.get_primaries()
    }

    report = events_drain_all()

    assert report.stored == 60
    assert set(Event.objects.values_list("event_id", flat=True)) == {event["event_id"] for event in events}


def test_events_workers_of_one_consumer_group_share_the_partitions(api_client, on_cluster: RedisCluster) -> None:
    api_client.post("/api/v1/events", {"events": _views("group", 48)}, format="json")

    # Two workers, each draining the partitions in its own order, as Celery's events workers do.
    first = events_drain_all(consumer="events-1@test")
    second = events_drain_all(consumer="events-2@test")

    assert (first.stored, second.stored) == (48, 0)
    assert Event.objects.count() == 48
    for partition in range(CLUSTER_PARTITIONS):
        pending = on_cluster.xpending(redis_keys.event_stream(partition), CONSUMER_GROUP)
        assert pending["pending"] == 0


def test_recommendations_answer_from_cluster_state(api_client, on_cluster: RedisCluster, vacuumed_vector_index) -> None:
    ItemFactory(external_id="anchor", embedding=unit(1, 0))
    ItemFactory(external_id="near", embedding=unit(1, 0.1))
    ItemFactory(external_id="far", embedding=unit(0, 1))
    api_client.post("/api/v1/events", {"event_id": "r1", "type": "view", "user_id": "u1", "item_id": "anchor"},
                    format="json")  # fmt: skip

    response = api_client.get("/api/v1/recommendations", {"user_id": "u1", "placement": "home", "k": 2})

    assert response.status_code == 200
    assert [(item["item_id"], item["source"]) for item in response.json()["items"]] == [
        ("near", "similar"), ("far", "similar"),
    ]  # fmt: skip


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_websocket_shelf_is_refreshed_through_a_channel_layer_of_several_hosts(on_cluster) -> None:
    from config.asgi import application
    from personalization.services import api_key_create
    from signals_app.services import events_ingest
    from surface_app.services import shelves_notify

    def catalog() -> str:
        ItemFactory(external_id="a", embedding=[1.0] + [0.0] * 63)
        ItemFactory(external_id="b", embedding=[0.9, 0.1] + [0.0] * 62)
        ItemFactory(external_id="c", embedding=[0.0, 1.0] + [0.0] * 62)
        return api_key_create(name="ws").raw_key

    key = await sync_to_async(catalog)()
    assert len(django_settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"]) == 6
    communicator = WebsocketCommunicator(application, f"/ws/v1/recommendations/?api_key={key}&user_id=u1&k=2")
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_json_from(timeout=5)
    assert {item["source"] for item in first["items"]} == {"fresh"}

    report = await sync_to_async(events_ingest)(
        raw_events=[{"event_id": "ws-1", "type": "view", "user_id": "u1", "item_id": "a"}]
    )
    await sync_to_async(shelves_notify)(user_keys={event.user_key for event in report.accepted_events})

    update = await communicator.receive_json_from(timeout=5)
    assert [item["item_id"] for item in update["items"]] == ["b", "c"]
    await communicator.disconnect()


def test_a_master_killed_during_ingest_loses_no_acknowledged_event(
    api_client, on_cluster: RedisCluster, cluster_folder: Path
) -> None:
    victim_key = redis_keys.event_stream(0)
    victim = on_cluster.get_node_from_key(victim_key)
    victim_pid = next(node.pid for node in valkey_cluster_nodes_running(cluster_folder) if node.port == victim.port)
    acknowledged: set[str] = set()
    refused = 0
    batch = 0

    def post_batch() -> None:
        nonlocal batch, refused
        events = _views(f"kill{batch}", 24)
        batch += 1
        response = api_client.post("/api/v1/events", {"events": events}, format="json")
        if response.status_code == 202:
            acknowledged.update(event["event_id"] for event in events)
        else:
            refused += 1  # a 503: the storefront sends it again; nothing was acknowledged

    def serve() -> None:
        # Recommendations keep answering through the failover (degraded at worst: the hot path does not wait).
        response = api_client.get("/api/v1/recommendations", {"user_id": f"kill{batch}-u0", "k": 3})
        assert response.status_code == 200

    for _ in range(5):
        post_batch()
    os.kill(victim_pid, signal.SIGKILL)
    # Ingest and serving go on through the failover until the replica serves partition 0, then a little more.
    _eventually(
        lambda: (post_batch(), serve(), _promoted(on_cluster, victim_key, victim.port))[2], "the replica's promotion"
    )
    for _ in range(5):
        post_batch()

    stored: set[str] = set()

    def all_stored() -> bool:
        events_drain_all()
        stored.update(Event.objects.filter(event_id__in=acknowledged).values_list("event_id", flat=True))
        return acknowledged <= stored

    _eventually(all_stored, "every acknowledged event stored")
    assert len(acknowledged) >= 10 * 24


def _promoted(client: RedisCluster, key: str, old_port: int) -> bool:
    try:
        client.nodes_manager.initialize()
        return client.get_node_from_key(key).port != old_port and client.xlen(key) >= 0
    except redis.RedisError:
        return False


def test_cluster_mode_refuses_to_start_without_a_standalone_broker() -> None:
    env = {**os.environ, "REDIS_CLUSTER_NODES": "127.0.0.1:7000", "DATABASE_URL": "postgresql://x@localhost/none"}
    env.pop("CELERY_BROKER_URL", None)

    result = subprocess.run(
        [sys.executable, "-c", "import config.settings"], env=env, capture_output=True, text=True, check=False
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured: REDIS_CLUSTER_NODES is set: CELERY_BROKER_URL must name" in result.stderr
