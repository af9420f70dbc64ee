from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandParser

from signals_app.consumer import events_drain_all

IDLE_SLEEP_SECONDS = 0.2


class Command(BaseCommand):
    help = (
        "Write the event streams to the PostgreSQL log (what the Celery 'events' queue does every second). "
        "With --follow it keeps consuming: run several for more throughput."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--follow", action="store_true", help="Keep consuming until interrupted.")

    def handle(self, *args: object, follow: bool, **options: object) -> None:
        total = 0
        while True:
            report = events_drain_all()
            total += report.stored
            if report.skipped:
                self.stderr.write(f"skipped: {report.skipped}")
                if not follow:
                    raise SystemExit(2)
            if not report.read:
                if not follow:
                    break
                time.sleep(IDLE_SLEEP_SECONDS)
        self.stdout.write(f"stored {total}")
