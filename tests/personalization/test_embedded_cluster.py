"""The embedded Valkey cluster: three masters with a replica each, real processes; a killed master's replica takes
over its slots and the killed node comes back as a replica."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from personalization.embedded_cluster import (
    ensure_valkey_cluster,
    start_valkey_node,
    valkey_cluster_nodes_running,
)

pytestmark = pytest.mark.cluster

FAILOVER_DEADLINE_SECONDS = 30.0


def _eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; a deadline only turns a hang into a failure, it is not the assertion."""
    deadline = time.monotonic() + FAILOVER_DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster_folder() -> Path:
    # The worker's cluster, shared with tests/test_cluster_mode.py (the session's end stops it: embedded_test_env).
    folder = Path(os.environ["PERSONALIZATION_DATA_DIR"]) / "valkey-cluster"
    ensure_valkey_cluster(folder)
    return folder


def _client(nodes: list[str]) -> RedisCluster:
    startup = [ClusterNode(*node.split(":")) for node in nodes]
    return RedisCluster(startup_nodes=startup, socket_timeout=2.0, socket_connect_timeout=1.0)


def _state_ok(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).cluster("INFO")["cluster_state"] == "ok")
    except redis.RedisError:
        return False


def test_a_second_call_attaches_to_the_running_cluster(cluster_folder: Path) -> None:
    before = valkey_cluster_nodes_running(cluster_folder)

    nodes = ensure_valkey_cluster(cluster_folder)

    assert valkey_cluster_nodes_running(cluster_folder) == before
    assert nodes == [f"127.0.0.1:{node.port}" for node in before]
    assert sorted(node.role for node in before) == ["master"] * 3 + ["replica"] * 3
    settings = {redis.Redis(port=node.port).config_get("hash-max-listpack-entries")["hash-max-listpack-entries"]
                for node in before}  # fmt: skip
    assert settings == {"128"}


def test_slots_are_split_in_equal_thirds_over_three_masters(cluster_folder: Path) -> None:
    client = _client(ensure_valkey_cluster(cluster_folder))

    ranges = sorted((int(start), int(end)) for start, end in (s[:2] for s in client.cluster_slots()))

    assert ranges == [(0, 5460), (5461, 10921), (10922, 16383)]


def test_a_killed_master_is_replaced_by_its_replica_and_rejoins_as_a_replica(cluster_folder: Path) -> None:
    client = _client(ensure_valkey_cluster(cluster_folder))
    client.set("{user:42}:state", "kept")
    master = client.get_node_from_key("{user:42}:state")
    # Acknowledged by the replica before the kill: asynchronous replication alone could lose it.
    assert client.execute_command("WAIT", 1, 5000, target_nodes=master) == 1
    killed = next(node for node in valkey_cluster_nodes_running(cluster_folder) if node.port == master.port)

    os.kill(killed.pid, signal.SIGKILL)

    survivors = [node.port for node in valkey_cluster_nodes_running(cluster_folder) if node.port != killed.port]
    _eventually(lambda: all(_state_ok(port) for port in survivors), "cluster_state:ok on the survivors")
    _eventually(lambda: _serves(client, "{user:42}:state", b"kept"), "the promoted replica serving the key")
    assert client.get_node_from_key("{user:42}:state").port != killed.port

    start_valkey_node(cluster_folder, killed.port)

    _eventually(lambda: _role(cluster_folder, killed.port) == "replica", "the old master rejoining as a replica")
    nodes = ensure_valkey_cluster(cluster_folder)
    assert len(nodes) == 6
    assert (
        sorted(node.role for node in valkey_cluster_nodes_running(cluster_folder)) == ["master"] * 3 + ["replica"] * 3
    )


def _serves(client: RedisCluster, key: str, value: bytes) -> bool:
    try:
        return bool(client.get(key) == value)
    except redis.RedisError:
        return False  # the slot has no master yet; the client refreshes its map on the next call


def _role(folder: Path, port: int) -> str | None:
    return next((node.role for node in valkey_cluster_nodes_running(folder) if node.port == port), None)
