from django.apps import AppConfig


class SurfaceAppConfig(AppConfig):
    name = "surface_app"
    verbose_name = "Surface: placements, rules, caps and live updates"

    def ready(self) -> None:
        # Serving compiles its rules snapshot with this (the hot path itself imports no models).
        from surface_app.rules_compile import rules_snapshot_build
        from surface_app.serving.rules import register_builder

        register_builder(rules_snapshot_build)

        # The layers below announce changes on the core seam; the live shelves hear them here.
        from personalization import live_updates
        from surface_app.services import catalog_changed_receive, users_changed_receive

        live_updates.subscribe(live_updates.UsersChanged, users_changed_receive)
        live_updates.subscribe(live_updates.CatalogChanged, catalog_changed_receive)
