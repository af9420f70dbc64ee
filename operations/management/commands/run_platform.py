"""Run the whole platform in the foreground: HTTP API (gunicorn), WebSockets (uvicorn), Celery workers and beat.

Embedded PostgreSQL and Valkey are started by the settings when DATABASE_URL / REDIS_URL are unset, started again
if they die, and stopped here on Ctrl-C; servers given by URL are left alone. Every process is restarted when it
exits, after a backoff, while the others go on (personalization/supervision.py).

It says what it does in numbered steps (progress bars on a terminal), waits until every process answers, and only
then prints the banner (operations/startup.py). Ctrl-C stops everything and exits 0, under `make run` too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import sys
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from operations import launcher, startup
from operations.bootstrap import BOOTSTRAP_STEPS
from personalization import embedded
from personalization.supervision import Program, Service, Supervisor

WEB_PROGRAMS = ("web-1", "web-2")
# The servers, the migrations, the bootstrap's steps, and the processes.
STEP_COUNT = 2 + len(BOOTSTRAP_STEPS) + 1
PROCESSES_STEP = "Starting web, WebSockets, workers and beat"


class Command(BaseCommand):
    help = "Migrate, load demo data on first run, then run web, WebSocket, worker and beat until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--ws-port", type=int, default=int(os.environ.get("WS_PORT", "8001")))
        parser.add_argument(
            "--web-workers",
            type=int,
            default=int(os.environ.get("WEB_WORKERS", "2")),
            help="gunicorn workers in all, split between the two web processes (at least one each).",
        )
        parser.add_argument("--no-demo", action="store_true", help="Do not load the demo data into an empty database.")

    def handle(self, *args: object, **options: object) -> None:
        embedded_services = not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
        data_dir = Path(settings.DATA_DIR)

        def stop_servers() -> None:
            with contextlib.suppress(OSError):
                self.stdout.write("Stopping the embedded PostgreSQL and Valkey…")
            embedded.stop_all(data_dir)

        launcher.foreground_run(
            partial(self._run, options, embedded_services=embedded_services),
            stop_servers=stop_servers if embedded_services else None,
            stdout=self.stdout,
        )

    def _run(self, options: dict[str, object], *, embedded_services: bool) -> None:
        data_dir = Path(settings.DATA_DIR)
        steps, report = launcher.platform_prepare(
            data_dir=data_dir,
            steps_total=STEP_COUNT,
            # The settings started (or reached) the servers while Django loaded: that step is this process's age.
            servers_title=(
                "Starting the embedded PostgreSQL and Valkey" if embedded_services else "Connecting to the servers"
            ),
            with_demo_data=not options["no_demo"],
            stdout=self.stdout,
        )
        host, port, ws_port = options["host"], options["port"], options["ws_port"]
        assert isinstance(host, str) and isinstance(port, int) and isinstance(ws_port, int)
        addresses = startup.Addresses(host, port, ws_port)
        startup.addresses_store(data_dir, addresses)
        env = launcher.child_env(
            {
                "DATABASE_URL": settings.DATABASE_URL,
                "REDIS_URL": settings.REDIS_URL,
                "WEBSOCKET_PUBLIC_URL": os.environ.get("WEBSOCKET_PUBLIC_URL", f"ws://{host}:{ws_port}"),
                # The demo page's socket is authenticated by the console session only from trusted origins.
                "DJANGO_CSRF_TRUSTED_ORIGINS": os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", f"http://{host}:{port}"),
                "PROMETHEUS_MULTIPROC_DIR": str(launcher.metrics_dir_fresh(data_dir)),
            }
        )
        python = sys.executable
        bin_dir = os.path.dirname(python)
        # Two gunicorn masters on the same port (SO_REUSEPORT, config/gunicorn.py), the workers split between them:
        # while the supervisor restarts one, the kernel hands every connection to the other.
        web_workers = options["web_workers"]
        assert isinstance(web_workers, int)
        workers_per_master = max(1, web_workers // len(WEB_PROGRAMS))
        processes = {
            name: (
                f"{bin_dir}/gunicorn config.wsgi:application --config python:config.gunicorn --bind {host}:{port}"
                f" --workers {workers_per_master} --name {name} --log-level warning"
            )
            for name in WEB_PROGRAMS
        }
        # The workers' names spelled out (not -n worker@%h): the readiness check pings them by name.
        worker_node, events_node = f"worker@{socket.gethostname()}", f"events@{socket.gethostname()}"
        processes |= {
            "ws": f"{bin_dir}/uvicorn config.asgi:application --host {host} --port {ws_port} --log-level warning",
            # --quiet: no ASCII-art banner; the "ready" line says it is up.
            "worker": (
                f"{bin_dir}/celery -A config --quiet worker --queues celery --loglevel INFO --concurrency 1"
                f" -n {worker_node}"
            ),
            # Writes the event streams to the PostgreSQL log; scale by running more of these.
            "events": (
                f"{bin_dir}/celery -A config --quiet worker --queues events --loglevel WARNING --concurrency 1"
                f" -n {events_node}"
            ),
            "beat": f"{bin_dir}/celery -A config --quiet beat --loglevel INFO",
        }
        celery_env = launcher.celery_env(env)
        banner = launcher.banner_for(
            report, addresses, footer=["  A process that exits is restarted; Ctrl-C stops everything."]
        )
        checks = startup.readiness_checks(addresses, worker_nodes=[worker_node, events_node], events_node=events_node)
        services = (
            [
                Service(
                    "postgres",
                    partial(embedded.postgres_running, data_dir),
                    partial(embedded.ensure_postgres, data_dir),
                ),
                Service(
                    "valkey", partial(embedded.valkey_running, data_dir), partial(embedded.ensure_valkey, data_dir)
                ),
            ]
            if embedded_services
            else []
        )
        programs = [
            Program(name, shlex.split(command), celery_env if name in ("worker", "events") else env)
            for name, command in processes.items()
        ]
        supervisor = Supervisor(programs, services, output=sys.stdout)
        launcher.supervise_until_signalled(
            supervisor, checks=checks, heading=steps.heading(PROCESSES_STEP), banner=banner, stdout=self.stdout
        )
