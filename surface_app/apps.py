from django.apps import AppConfig


class SurfaceAppConfig(AppConfig):
    name = "surface_app"
    verbose_name = "Surface: slates and live updates"
