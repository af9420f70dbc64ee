"""Print `make run`'s banner again: URLs, console login and demo API key, from what the run command kept.

The admin password and the demo key are those made on the first start (`console-credentials.json` in the data
folder, owner only); a password changed since is not known, and the banner says how to reset it.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from operations import startup
from operations.bootstrap import console_credentials_read, credentials_file
from personalization import embedded


class Command(BaseCommand):
    help = "Print the running platform's URLs, admin login and demo API key (the banner of `make run`)."
    # cluster_info prints the same banner for `make cluster`, with its processes.
    start_command = "make run"
    again_command = "platform_info"

    def handle(self, *args: object, **options: object) -> None:
        data_dir = Path(settings.DATA_DIR)
        try:
            self._print_banner(data_dir)
        finally:
            # The settings start the embedded servers for any command: do not leave them behind when the platform
            # is not running.
            embedded_services = not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
            if embedded_services and embedded.servers_started_since(data_dir, psutil.Process().create_time()):
                embedded.stop_all(data_dir)

    def _print_banner(self, data_dir: Path) -> None:
        credentials = console_credentials_read()
        if credentials is None:
            raise CommandError(f"No console login yet: `{self.start_command}` makes one on its first start.")
        # Where the last `make run` listened; before any, the run command's defaults.
        environ = os.environ
        addresses = startup.addresses_read(data_dir) or startup.Addresses(
            environ.get("HOST", "127.0.0.1"), int(environ.get("PORT", "8000")), int(environ.get("WS_PORT", "8001"))
        )
        running = startup.http_ok(f"http://{addresses.probe_host}:{addresses.port}/readyz")
        self.stdout.write(
            startup.banner(
                heading="Personalization platform: "
                + ("running" if running else f"not running (start it with `{self.start_command}`)"),
                addresses=addresses,
                admin_password=credentials.admin_password,
                demo_api_key=credentials.demo_api_key,
                example_user=startup.example_shopper(),
                credentials_path=credentials_file(),
                footer=self.footer(data_dir, running=running),
                again_command=self.again_command,
            )
        )

    def footer(self, data_dir: Path, *, running: bool) -> list[str]:
        return []
