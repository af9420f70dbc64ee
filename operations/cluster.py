"""Cluster mode (`make cluster`, `manage.py run_cluster`): the plan of what runs where, as plain functions.

nginx on one public port in front of several gunicorn web processes and uvicorn WebSocket servers, each on its own
port; Celery events workers (one consumer group), a trainer worker and beat; a Valkey cluster (three masters with a
replica each, personalization/embedded_cluster.py), a standalone Valkey for Celery's broker and the cache (kombu
has no Redis Cluster transport), and PostgreSQL primary plus a streaming replica. Here: the ports, every child's
environment, the process command lines and nginx's configuration; nothing is started (tests read the plan), except
by `cluster_servers_start`, which manage.py calls before Django loads so that the settings see the servers' URLs.
This module imports no Django at import time.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path

# The cluster's own folder under the data folder: `make run`'s servers and files are never touched.
CLUSTER_FOLDER = "cluster"
PLAN_FILE = "cluster-plan.json"
VALKEY_CLUSTER_FOLDER = "valkey-cluster"
REPLICA_NAME = "pg-replica"
DEFAULT_PORT = 8080
# The settings' default in cluster mode, spelled out for every child: one partition on each of the three masters
# (personalization.redis_keys places them); EVENT_PARTITIONS in the environment wins. Fixed once data exists.
CLUSTER_EVENT_PARTITIONS = 3
# The commands whose settings must see the cluster's servers (manage.py prepares their environment).
CLUSTER_COMMANDS = ("run_cluster", "cluster_info")


@dataclass(frozen=True)
class ClusterSizes:
    web: int = 3
    web_workers: int = 1  # gunicorn workers per web process
    ws: int = 2
    events_workers: int = 2


@dataclass(frozen=True)
class ClusterPlan:
    """Where each process listens: nginx on host:port, the others on 127.0.0.1 behind it."""

    host: str
    port: int
    web_ports: tuple[int, ...]
    ws_ports: tuple[int, ...]
    web_workers: int
    events_workers: int

    @property
    def probe_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def public_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def web_names(self) -> list[str]:
        return [f"web-{n}" for n in range(1, len(self.web_ports) + 1)]

    def ws_names(self) -> list[str]:
        return [f"ws-{n}" for n in range(1, len(self.ws_ports) + 1)]

    def events_names(self) -> list[str]:
        return [f"events-{n}" for n in range(1, self.events_workers + 1)]


def plan_make(*, host: str, port: int, sizes: ClusterSizes, internal_ports: Iterable[int]) -> ClusterPlan:
    """The plan, the web processes then the WebSocket servers taking `internal_ports` in order."""
    ports = iter(internal_ports)
    web_ports = tuple(next(ports) for _ in range(sizes.web))
    ws_ports = tuple(next(ports) for _ in range(sizes.ws))
    if len({port, *web_ports, *ws_ports}) != 1 + sizes.web + sizes.ws:
        raise ValueError(f"every process needs a port of its own: {port}, {web_ports}, {ws_ports}")
    return ClusterPlan(host, port, web_ports, ws_ports, sizes.web_workers, sizes.events_workers)


def free_ports(count: int) -> list[int]:
    """Ports free now, as many as asked, distinct (held open together while chosen)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def plan_store(data_dir: Path, plan: ClusterPlan, servers: Mapping[str, str]) -> None:
    """Kept for `manage.py cluster_info`: the plan and the servers' settings of the last start."""
    (data_dir / PLAN_FILE).write_text(json.dumps({"plan": asdict(plan), "servers": dict(servers)}))


def plan_read(data_dir: Path) -> tuple[ClusterPlan, dict[str, str]] | None:
    try:
        stored = json.loads((data_dir / PLAN_FILE).read_text())
        plan = stored["plan"]
        plan["web_ports"], plan["ws_ports"] = tuple(plan["web_ports"]), tuple(plan["ws_ports"])
        return ClusterPlan(**plan), dict(stored["servers"])
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return None


def cluster_data_dir(data_dir: Path) -> Path:
    return data_dir / CLUSTER_FOLDER


def worker_nodes(plan: ClusterPlan, hostname: str) -> tuple[str, list[str]]:
    """The Celery node names of the trainer worker and of the events workers (distinct -n names: one consumer
    each in the events' consumer group; the readiness check pings them by name)."""
    return f"worker@{hostname}", [f"{name}@{hostname}" for name in plan.events_names()]


def process_commands(plan: ClusterPlan, *, bin_dir: str, hostname: str, nginx_dir: Path) -> dict[str, list[str]]:
    """Every supervised program's command line, by name."""
    commands = {
        name: [
            f"{bin_dir}/gunicorn", "config.wsgi:application", "--config", "python:config.gunicorn",
            "--bind", f"127.0.0.1:{port}", "--workers", str(plan.web_workers), "--name", name,
            "--log-level", "warning",
        ]
        for name, port in zip(plan.web_names(), plan.web_ports, strict=True)
    }  # fmt: skip
    commands |= {
        name: [f"{bin_dir}/uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
        for name, port in zip(plan.ws_names(), plan.ws_ports, strict=True)
    }  # fmt: skip
    trainer, events = worker_nodes(plan, hostname)
    celery = [f"{bin_dir}/celery", "-A", "config", "--quiet"]
    commands |= {
        name: [*celery, "worker", "--queues", "events", "--loglevel", "WARNING", "--concurrency", "1", "-n", node]
        for name, node in zip(plan.events_names(), events, strict=True)
    }
    commands["worker"] = [*celery, "worker", "--queues", "celery", "--loglevel", "INFO", "--concurrency", "1",
                          "-n", trainer]  # fmt: skip
    commands["beat"] = [*celery, "beat", "--loglevel", "INFO"]
    # The error log before the configuration is read: nginx opens its compiled-in one otherwise (/var/log/nginx).
    commands["nginx"] = ["nginx", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf"),
                         "-e", str(nginx_dir / "error.log")]  # fmt: skip
    return commands


def is_celery_worker(name: str) -> bool:
    return name == "worker" or name.startswith("events-")


# The settings `servers_env` gives the children (and manage.py this process's settings).
SERVER_SETTINGS = (
    "DATABASE_URL", "DATABASE_REPLICA_URLS", "REDIS_URL", "CELERY_BROKER_URL", "REDIS_CLUSTER_NODES",
    "CHANNEL_LAYER_HOSTS", "EVENT_PARTITIONS",
)  # fmt: skip


def servers_env(
    *, database_url: str, replica_urls: list[str], broker_url: str, valkey_nodes: list[str]
) -> dict[str, str]:
    """The servers' settings as the children read them (config/settings.py): the platform's state on the Valkey
    cluster, Celery and the cache on the standalone Valkey, reads that tolerate lag on the replica."""
    return {
        "DATABASE_URL": database_url,
        "DATABASE_REPLICA_URLS": ",".join(replica_urls),
        "REDIS_URL": broker_url,
        "CELERY_BROKER_URL": broker_url,
        "REDIS_CLUSTER_NODES": ",".join(valkey_nodes),
        # Channels' pub/sub layer over every node: a PUBLISH reaches the subscribers of the whole cluster.
        "CHANNEL_LAYER_HOSTS": ",".join(f"redis://{node}/0" for node in valkey_nodes),
        "EVENT_PARTITIONS": os.environ.get("EVENT_PARTITIONS", str(CLUSTER_EVENT_PARTITIONS)),
    }


def children_env(
    base: Mapping[str, str], *, plan: ClusterPlan, servers: Mapping[str, str], data_dir: Path, metrics_dir: Path
) -> dict[str, str]:
    """Every child's environment: the servers, the public addresses through nginx, and the cluster's data folder
    (a child never starts an embedded server of its own: every URL is set)."""
    public_ws = f"ws://{plan.host}:{plan.port}"
    return {
        **base,
        **servers,
        "PERSONALIZATION_DATA_DIR": str(data_dir),
        "WEBSOCKET_PUBLIC_URL": base.get("WEBSOCKET_PUBLIC_URL", public_ws),
        # The demo page's socket is authenticated by the console session only from trusted origins: nginx's.
        "DJANGO_CSRF_TRUSTED_ORIGINS": base.get("DJANGO_CSRF_TRUSTED_ORIGINS", plan.public_url),
        # nginx appends the client's address to X-Forwarded-For: wrong keys are counted against the client, not
        # against nginx's 127.0.0.1.
        "API_TRUSTED_PROXY_COUNT": base.get("API_TRUSTED_PROXY_COUNT", "1"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }


def _proxy_headers(indent: str) -> str:
    # Host with its port, as the browser sent it: Django's ALLOWED_HOSTS and CSRF origin check see the public
    # address, so no USE_X_FORWARDED_HOST is needed.
    headers = [
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
    ]
    return "\n".join(f"{indent}{line}" for line in headers)


def nginx_config(plan: ClusterPlan, *, folder: Path, as_root: bool) -> str:
    """nginx's whole configuration: no system file is read or written; pid, logs and buffers stay in `folder`."""
    web = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=3s;" for port in plan.web_ports)
    ws = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=3s;" for port in plan.ws_ports)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {kind}_temp_path {folder / 'tmp' / kind};" for kind in kinds)
    # Run by root, nginx's workers would switch to `nobody`, which may not write the buffers' folders made by root.
    user = "user root;\n" if as_root else ""
    return f"""# Written by manage.py run_cluster at each start (operations/cluster.py): change the plan, not this file.
{user}daemon off;
worker_processes 2;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log {folder / "access.log"};
{temp}
    # Item batches and CSV imports in the console.
    client_max_body_size 20m;

    # Keep-alive connections to the upstreams want an empty Connection header; a WebSocket wants "upgrade".
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" "";
    }}

    upstream web {{
{web}
        keepalive 32;
    }}

    upstream ws {{
{ws}
        keepalive 8;
    }}

    server {{
        listen {plan.host}:{plan.port};

        location /ws/ {{
            proxy_pass http://ws;
            proxy_http_version 1.1;
{_proxy_headers("            ")}
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # A socket stays open as long as its page: no read timeout to speak of.
            proxy_read_timeout 1d;
            proxy_next_upstream error timeout;
        }}

        location / {{
            proxy_pass http://web;
            proxy_http_version 1.1;
{_proxy_headers("            ")}
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            # A request a killed web process did not answer goes to the next one. nginx retries a POST only with
            # non_idempotent: ours are safe to send twice (events are deduplicated by their event_id, item upserts
            # replace), so a dead process costs no failed request. Not on a 503: the platform's own answer while a
            # Valkey master fails over, the same from every process; counted as failures, those 503s took every
            # web process out for fail_timeout and turned the whole API into nginx's 502s.
            proxy_next_upstream error timeout non_idempotent;
        }}
    }}
}}
"""


def cluster_servers_start(data_dir: Path) -> dict[str, str]:
    """Start (or attach to) the cluster's servers in `data_dir` and return their settings (servers_env)."""
    from personalization import embedded, embedded_cluster

    database_url = embedded.ensure_postgres(data_dir)
    replica_url = embedded.ensure_postgres_replica(data_dir, primary_url=database_url, name=REPLICA_NAME)
    broker_url = embedded.ensure_valkey(data_dir)
    # Its ports are chosen below the ephemeral range on the first start, then kept.
    nodes = embedded_cluster.ensure_valkey_cluster(data_dir / VALKEY_CLUSTER_FOLDER)
    return servers_env(database_url=database_url, replica_urls=[replica_url], broker_url=broker_url, valkey_nodes=nodes)


def cluster_servers_stop(data_dir: Path) -> None:
    from personalization import embedded, embedded_cluster

    embedded_cluster.stop_valkey_cluster(data_dir / VALKEY_CLUSTER_FOLDER)
    embedded.stop_postgres_replica(data_dir, name=REPLICA_NAME)
    embedded.stop_all(data_dir)


def command_environ_prepare(argv: list[str], environ: MutableMapping[str, str]) -> None:
    """For the cluster's commands, before Django loads: the cluster's data folder, and for run_cluster its servers
    started and their URLs set, so that the settings (and the migrations, the bootstrap) use them."""
    command = argv[1] if len(argv) > 1 else ""
    if command not in CLUSTER_COMMANDS:
        return
    from personalization import embedded

    data_dir = cluster_data_dir(embedded.default_data_dir(Path(__file__).resolve().parent.parent))
    environ["PERSONALIZATION_DATA_DIR"] = str(data_dir)
    if command == "run_cluster" and not {"-h", "--help"} & set(argv):
        try:
            environ.update(cluster_servers_start(data_dir))
        except (Exception, KeyboardInterrupt) as error:
            # Nothing left behind half started: the next start begins from the same folders.
            cluster_servers_stop(data_dir)
            raise SystemExit(f"Cluster mode's servers did not start: {error}") from error


def processes_table(plan: ClusterPlan, *, valkey_nodes: list[tuple[str, str]], servers: Mapping[str, str]) -> list[str]:
    """The banner's lines on what runs where: the processes behind nginx, then the servers (valkey_nodes: address
    and role)."""
    rows = [("nginx", f"{plan.host}:{plan.port}", "the one public port: API, admin, docs, /ws/")]
    rows += [
        (name, f"127.0.0.1:{port}", f"gunicorn, {plan.web_workers} worker(s)")
        for name, port in zip(plan.web_names(), plan.web_ports, strict=True)
    ]
    rows += [
        (name, f"127.0.0.1:{port}", "uvicorn, WebSockets")
        for name, port in zip(plan.ws_names(), plan.ws_ports, strict=True)
    ]
    rows += [(name, "", "Celery, queue events (one consumer group)") for name in plan.events_names()]
    rows += [("worker", "", "Celery, queue celery (training)"), ("beat", "", "Celery beat")]
    rows += [("valkey", address, f"cluster node, {role}") for address, role in valkey_nodes]
    rows += [("broker", servers.get("CELERY_BROKER_URL", ""), "Valkey: Celery's broker and the cache")]
    rows += [("postgres", servers.get("DATABASE_URL", ""), "primary")]
    rows += [
        ("postgres", url, "streaming replica") for url in servers.get("DATABASE_REPLICA_URLS", "").split(",") if url
    ]
    width = min(26, max(len(where) for _, where, _ in rows))  # a long URL overflows its column
    return [f"    {name:<9} {where:<{width}}  {what}" for name, where, what in rows]
