from django.core.management.base import BaseCommand

from operations.bootstrap import platform_bootstrap


class Command(BaseCommand):
    help = "Load the demo data into an empty database, train the first model and install the default schedules."

    def handle(self, *args: object, **options: object) -> None:
        report = platform_bootstrap()
        self.stdout.write(f"demo loaded: {report.demo_loaded}, model trained: {report.model_trained}")
