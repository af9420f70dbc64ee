from django.apps import AppConfig


class SurfaceAppConfig(AppConfig):
    name = "surface_app"
    verbose_name = "Surface: placements, rules, caps and live updates"

    def ready(self) -> None:
        # Serving compiles its rules snapshot with this (the hot path itself imports no models).
        from surface_app.rules_compile import rules_snapshot_build
        from surface_app.serving.rules import register_builder

        register_builder(rules_snapshot_build)
