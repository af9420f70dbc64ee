from django.apps import AppConfig


class ScoringAppConfig(AppConfig):
    name = "scoring_app"
    verbose_name = "Score: retrieval, ranking and training"

    def ready(self) -> None:
        from personalization.scrape_collectors import scrape_collector_register
        from scoring_app.model_metrics import ModelAgeCollector

        scrape_collector_register(ModelAgeCollector)
