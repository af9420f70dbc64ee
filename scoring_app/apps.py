from django.apps import AppConfig


class ScoringAppConfig(AppConfig):
    name = "scoring_app"
    verbose_name = "Score: retrieval, ranking and model versions"
