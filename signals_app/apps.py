from django.apps import AppConfig


class SignalsAppConfig(AppConfig):
    name = "signals_app"
    verbose_name = "Signal: events"

    def ready(self) -> None:
        from personalization.scrape_collectors import scrape_collector_register
        from signals_app.stream_metrics import EventStreamCollector

        scrape_collector_register(EventStreamCollector)
