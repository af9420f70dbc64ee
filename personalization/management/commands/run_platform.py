"""Run the whole platform in the foreground: HTTP API (gunicorn), WebSockets (uvicorn), Celery workers and beat.

Embedded PostgreSQL and Valkey are started by the settings when DATABASE_URL / REDIS_URL are unset, started again
if they die, and stopped here on Ctrl-C; servers given by URL are left alone. Every process is restarted when it
exits, after a backoff, while the others go on (personalization/supervision.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from functools import partial
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from personalization import embedded
from personalization.bootstrap import ADMIN_USERNAME, platform_bootstrap
from personalization.supervision import Program, Service, Supervisor

WEB_PROGRAMS = ("web-1", "web-2")


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
        call_command("migrate", interactive=False, verbosity=0)
        report = platform_bootstrap(with_demo_data=not options["no_demo"])

        host, port, ws_port = options["host"], options["port"], options["ws_port"]
        env = {
            **os.environ,
            "DATABASE_URL": settings.DATABASE_URL,
            "REDIS_URL": settings.REDIS_URL,
            "WEBSOCKET_PUBLIC_URL": os.environ.get("WEBSOCKET_PUBLIC_URL", f"ws://{host}:{ws_port}"),
            # The demo page's socket is authenticated by the console session only from trusted origins.
            "DJANGO_CSRF_TRUSTED_ORIGINS": os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", f"http://{host}:{port}"),
            "PYTHONUNBUFFERED": "1",
            # Readable key=value lines in the terminal, whatever DJANGO_DEBUG says (production prints JSON).
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console"),
        }
        # Counters and histograms from every process are merged at scrape time (prometheus_client multiprocess).
        metrics_dir = Path(settings.DATA_DIR) / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
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
        processes |= {
            "ws": f"{bin_dir}/uvicorn config.asgi:application --host {host} --port {ws_port} --log-level warning",
            "worker": f"{bin_dir}/celery -A config worker --queues celery --loglevel INFO --concurrency 1 -n worker@%h",
            # Writes the event streams to the PostgreSQL log; scale by running more of these.
            "events": (
                f"{bin_dir}/celery -A config worker --queues events --loglevel WARNING --concurrency 1 -n events@%h"
            ),
            "beat": f"{bin_dir}/celery -A config beat --loglevel INFO",
        }
        base = f"http://{host}:{port}"
        from graph_app.models import Shopper

        # A shopper with history, for the example request (the demo's customers; any id works).
        example_user = Shopper.objects.order_by("external_id").values_list("external_id", flat=True).first() or "u1"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Personalization platform",
                    f"  API docs   {base}/api/v1/docs/   (open to anyone; Authorize with the API key to try calls)",
                    f"  Admin      {base}/admin/   user '{ADMIN_USERNAME}', password {report.admin_password}",
                    f"  Demo page  {base}/demo/",
                    f"  WebSocket  ws://{host}:{ws_port}/ws/v1/recommendations/?user_id=...&api_key=...",
                    f"  API key    {report.demo_api_key}",
                    f"  Try        curl -H 'Authorization: Bearer {report.demo_api_key}' \\\n"
                    f"               '{base}/api/v1/recommendations?user_id={example_user}&placement=home'",
                    "  A process that exits is restarted; Ctrl-C stops everything.",
                    "",
                ]
            )
        )
        self.stdout.flush()
        data_dir = Path(settings.DATA_DIR)
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
        programs = [Program(name, shlex.split(command), env) for name, command in processes.items()]
        supervisor = Supervisor(programs, services, output=sys.stdout)
        try:
            supervisor.run_until_signalled()
        finally:
            if embedded_services:
                self.stdout.write("Stopping the embedded PostgreSQL and Valkey…")
                embedded.stop_all(data_dir)
