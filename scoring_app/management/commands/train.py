import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from scoring_app.training_chain import TRAINING_TASKS, training_chain_run


class Command(BaseCommand):
    help = (
        "Run the scheduled training chain now, as Celery beat runs it (" + ", ".join(TRAINING_TASKS) + "), with "
        "progress on stderr and each task's report as JSON on stdout. New models are promoted only through their "
        "quality gates, exactly as on schedule."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--skip", action="append", default=[], choices=TRAINING_TASKS, metavar="TASK",
            help="leave this task out (repeatable), e.g. one measured on its own",
        )  # fmt: skip

    def handle(self, *args: object, **options: Any) -> None:
        runs = training_chain_run(progress=lambda message: self.stderr.write(message), skip=options["skip"])
        report = [
            {"task": run.task, "seconds": run.seconds, "peak_rss_mib": run.peak_rss_mib, "result": run.result}
            for run in runs
        ]
        self.stdout.write(json.dumps(report, indent=2, default=str))
