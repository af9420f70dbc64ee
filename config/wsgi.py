import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

django_application = get_wsgi_application()

# Storefronts' GET /api/v1/recommendations is answered before Django's request handling (see the module); it
# imports the apps' code, so after Django is set up.
from surface_app.fast_path import recommendations_fast_path  # noqa: E402

application = recommendations_fast_path(django_application)
