from django.apps import AppConfig


class PersonalizationConfig(AppConfig):
    name = "personalization"
    verbose_name = "Platform core"

    def ready(self) -> None:
        from personalization import schema  # noqa: F401  (registers the OpenAPI description of API keys)
