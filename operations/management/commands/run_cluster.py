"""Run the platform in cluster mode in the foreground (`make cluster`): nginx on one public port in front of several
gunicorn web processes and uvicorn WebSocket servers, Celery events workers, a trainer worker and beat, on a Valkey
cluster (three masters with a replica each), a standalone Valkey (Celery's broker, the cache) and PostgreSQL
primary plus a streaming replica, all real local processes. The plan is operations/cluster.py.

manage.py started the servers before Django loaded (operations.cluster.command_environ_prepare), in the cluster's
own data folder (`.data/cluster`), so that the settings, the migrations and the first-run bootstrap use them. Then
as `make run`: numbered steps, every process supervised and restarted when it exits, the servers watched and
started again when they die (a killed Valkey master comes back as a replica of the node that took over), the
banner once every process answers, and Ctrl-C stops everything.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from operations import cluster, launcher, startup
from operations.bootstrap import BOOTSTRAP_STEPS
from personalization import embedded, embedded_cluster
from personalization.supervision import Backoff, Program, Service, Supervisor

# The servers, the migrations, the bootstrap's steps, and the processes.
STEP_COUNT = 2 + len(BOOTSTRAP_STEPS) + 1
SERVERS_STEP = "Starting the Valkey cluster, the broker, PostgreSQL and its replica"
PROCESSES_STEP = "Starting nginx, web, WebSockets, workers and beat"
# The Valkey nodes' roles are asked at most this often (every node is probed by the supervisor's every tick).
NODES_PROBE_SECONDS = 0.5
# A dead Valkey node is started again after this long at first: longer than its replica takes to be elected in its
# place (cluster-node-timeout 1 s, then the election), so that a killed master comes back as the new master's
# replica, as in a deployment where a host takes minutes to return, and the failover is exercised.
NODE_RESTART_SECONDS = 5.0


class Command(BaseCommand):
    help = "Run the platform in cluster mode (nginx, several web, WebSocket and Celery processes, Valkey cluster, "
    "PostgreSQL primary and replica) until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        sizes = cluster.ClusterSizes()
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"), help="nginx's address.")
        parser.add_argument("--port", type=int, default=int(os.environ.get("CLUSTER_PORT", cluster.DEFAULT_PORT)))
        parser.add_argument("--web", type=int, default=sizes.web, help="gunicorn web processes, each on its port.")
        parser.add_argument("--web-workers", type=int, default=sizes.web_workers, help="gunicorn workers each.")
        parser.add_argument("--ws", type=int, default=sizes.ws, help="uvicorn WebSocket servers.")
        parser.add_argument("--events-workers", type=int, default=sizes.events_workers, help="Celery events workers.")
        parser.add_argument("--no-demo", action="store_true", help="Do not load the demo data into an empty database.")

    def handle(self, *args: object, **options: object) -> None:
        data_dir = Path(settings.DATA_DIR)
        if not os.environ.get("REDIS_CLUSTER_NODES"):
            raise CommandError("Start it with `manage.py run_cluster` (manage.py starts the cluster's servers).")

        def stop_servers() -> None:
            with contextlib.suppress(OSError):
                self.stdout.write("Stopping the Valkey cluster, the broker, PostgreSQL and its replica…")
            cluster.cluster_servers_stop(data_dir)

        launcher.foreground_run(partial(self._run, options), stop_servers=stop_servers, stdout=self.stdout)

    def _run(self, options: dict[str, object]) -> None:
        data_dir = Path(settings.DATA_DIR)
        sizes = cluster.ClusterSizes(
            web=_positive(options, "web"),
            web_workers=_positive(options, "web_workers"),
            ws=_positive(options, "ws"),
            events_workers=_positive(options, "events_workers"),
        )
        steps, report = launcher.platform_prepare(
            data_dir=data_dir,
            steps_total=STEP_COUNT,
            servers_title=SERVERS_STEP,
            with_demo_data=not options["no_demo"],
            stdout=self.stdout,
        )
        host, port = options["host"], options["port"]
        assert isinstance(host, str) and isinstance(port, int)
        plan = cluster.plan_make(
            host=host, port=port, sizes=sizes, internal_ports=cluster.free_ports(sizes.web + sizes.ws)
        )
        addresses = startup.Addresses(host, port, port)  # WebSockets go through nginx too (/ws/)
        startup.addresses_store(data_dir, addresses)
        servers = {name: os.environ[name] for name in cluster.SERVER_SETTINGS}
        cluster.plan_store(data_dir, plan, servers)
        env = launcher.child_env(
            cluster.children_env(
                os.environ,
                plan=plan,
                servers=servers,
                data_dir=data_dir,
                metrics_dir=launcher.metrics_dir_fresh(data_dir),
            )
        )
        nginx_dir = data_dir / "nginx"
        _nginx_folder_write(plan, nginx_dir)
        hostname = socket.gethostname()
        commands = cluster.process_commands(
            plan, bin_dir=os.path.dirname(sys.executable), hostname=hostname, nginx_dir=nginx_dir
        )
        celery_env = launcher.celery_env(env)
        programs = [
            Program(name, argv, celery_env if cluster.is_celery_worker(name) else env)
            for name, argv in commands.items()
        ]
        supervisor = Supervisor(programs, _services(data_dir, servers), output=sys.stdout)
        nodes = embedded_cluster.valkey_cluster_nodes_running(data_dir / cluster.VALKEY_CLUSTER_FOLDER)
        banner = launcher.banner_for(
            report,
            addresses,
            footer=[
                "  Cluster",
                *cluster.processes_table(
                    plan, valkey_nodes=[(f"127.0.0.1:{node.port}", node.role) for node in nodes], servers=servers
                ),
                "  A process or server that exits is restarted; Ctrl-C stops everything.",
            ],
            again_command="cluster_info",
        )
        launcher.supervise_until_signalled(
            supervisor,
            checks=_readiness_checks(plan, hostname),
            heading=steps.heading(PROCESSES_STEP),
            banner=banner,
            stdout=self.stdout,
        )


def _positive(options: dict[str, object], name: str) -> int:
    value = options[name]
    if not isinstance(value, int) or value < 1:
        raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    return value


def _nginx_folder_write(plan: cluster.ClusterPlan, folder: Path) -> None:
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    (folder / "nginx.conf").write_text(cluster.nginx_config(plan, folder=folder, as_root=os.geteuid() == 0))


def _readiness_checks(plan: cluster.ClusterPlan, hostname: str) -> list[startup.ReadinessCheck]:
    """Each web process's /readyz on its own port, each WebSocket server's /healthz, nginx's /readyz (through to a
    web process), and the Celery workers and beat."""
    trainer, events = cluster.worker_nodes(plan, hostname)
    return [
        *[
            startup.http_check(name, f"http://127.0.0.1:{port}/readyz")
            for name, port in zip(plan.web_names(), plan.web_ports, strict=True)
        ],
        *[
            startup.http_check(name, f"http://127.0.0.1:{port}/healthz")
            for name, port in zip(plan.ws_names(), plan.ws_ports, strict=True)
        ],
        startup.http_check("nginx", f"http://{plan.probe_host}:{plan.port}/readyz"),
        *startup.celery_checks(worker_nodes=[trainer, *events], events_nodes=events),
    ]


def _services(data_dir: Path, servers: dict[str, str]) -> list[Service]:
    """The servers outside our process tree, probed every tick and started again when dead: each Valkey node (a
    master back after a kill rejoins as a replica), the broker, the PostgreSQL primary and its replica."""
    probe = _NodesProbe(data_dir / cluster.VALKEY_CLUSTER_FOLDER)
    node_backoff = partial(Backoff, initial_seconds=NODE_RESTART_SECONDS, cap_seconds=2 * NODE_RESTART_SECONDS)
    ports = [int(node.rsplit(":", 1)[1]) for node in servers["REDIS_CLUSTER_NODES"].split(",")]
    return [
        *[
            Service(f"valkey-{port}", partial(probe.running, port), partial(probe.start, port), node_backoff)
            for port in ports
        ],
        Service("broker", partial(embedded.valkey_running, data_dir), partial(embedded.ensure_valkey, data_dir)),
        Service(
            "pg-primary", partial(embedded.postgres_running, data_dir), partial(embedded.ensure_postgres, data_dir)
        ),
        Service(
            "pg-replica",
            partial(embedded.postgres_replica_running, data_dir, name=cluster.REPLICA_NAME),
            partial(
                embedded.ensure_postgres_replica,
                data_dir,
                primary_url=servers["DATABASE_URL"],
                name=cluster.REPLICA_NAME,
            ),
        ),
    ]


class _NodesProbe:
    """Which Valkey nodes are alive, asked once for all of them at most every NODES_PROBE_SECONDS."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._asked_at = 0.0
        self._running: set[int] = set()

    def running(self, port: int) -> bool:
        if time.monotonic() - self._asked_at >= NODES_PROBE_SECONDS:
            self._running = {node.port for node in embedded_cluster.valkey_cluster_nodes_running(self._folder)}
            self._asked_at = time.monotonic()
        return port in self._running

    def start(self, port: int) -> None:
        embedded_cluster.start_valkey_node(self._folder, port)
        self._asked_at = 0.0  # asked again at the next probe: it runs now
