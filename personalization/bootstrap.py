"""First-run set-up of a platform: demo data, first model, default schedules, console login, a demo API key.

Every step is idempotent, so the run command calls it on every start and a second start is fast.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

logger = logging.getLogger(__name__)

ADMIN_USERNAME = "admin"
SECONDS_SCHEDULES = [
    # (name, task, every N seconds)
    ("Drain event streams into the log", "signals.events_drain", 1),
]
DEFAULT_SCHEDULES = [
    # (name, task, every N minutes)
    ("Refresh item popularity", "signals.popularity_refresh", 5),
    ("Retrain embeddings", "graph.embeddings_train", 60),
    ("Create event log partitions", "signals.event_log_partitions_ensure", 1440),
    ("Maintain impression log partitions (create ahead, drop past retention)", "signals.impression_log_maintain", 1440),
    ("Refresh item neighbourhoods", "graph.neighbourhoods_refresh", 60),
    ("Materialize training rows from impressions", "graph.features_materialize", 10),
    ("Retrain the ranker", "scoring.ranker_train", 360),
    ("Publish serving models to Redis", "scoring.models_serving_publish", 1),
    ("Teach the contextual bandit from rewards", "scoring.bandit_learn", 1),
]


@dataclass(frozen=True)
class BootstrapReport:
    demo_loaded: bool
    model_trained: bool
    admin_password: str
    demo_api_key: str


def _secrets_file() -> Path:
    return Path(settings.DATA_DIR) / "console-credentials.json"


def schedules_install_defaults() -> int:
    """Create the default beat schedules once; staff edit them in the admin afterwards, so never overwrite."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    created = 0
    schedules = [(name, task, seconds, IntervalSchedule.SECONDS) for name, task, seconds in SECONDS_SCHEDULES]
    schedules += [(name, task, minutes, IntervalSchedule.MINUTES) for name, task, minutes in DEFAULT_SCHEDULES]
    for name, task, every, period in schedules:
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
        _, was_created = PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, "interval": interval})
        created += was_created
    return created


def _console_credentials() -> tuple[str, str]:
    """The admin password and demo API key made on the first run (kept in the ignored data folder)."""
    from personalization.services import api_key_create

    path = _secrets_file()
    if path.exists():
        stored = json.loads(path.read_text())
        user = get_user_model().objects.filter(username=ADMIN_USERNAME).first()
        if user is not None and user.check_password(stored["admin_password"]):
            return stored["admin_password"], stored["demo_api_key"]
        if user is not None:
            return "(changed since the first run)", stored["demo_api_key"]
    password = secrets.token_urlsafe(12)
    with transaction.atomic():
        user_model = get_user_model()
        user = user_model.objects.filter(username=ADMIN_USERNAME).first()
        if user is None:
            user_model.objects.create_superuser(username=ADMIN_USERNAME, email="", password=password)
        else:
            user.set_password(password)
            user.save(update_fields=["password"])
        raw_key = api_key_create(name="demo storefront").raw_key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"admin_password": password, "demo_api_key": raw_key}))
    path.chmod(0o600)
    return password, raw_key


def platform_bootstrap(*, with_demo_data: bool = True) -> BootstrapReport:
    from graph_app.demo import demo_data_load
    from graph_app.models import Item
    from graph_app.neighbourhoods import neighbourhoods_refresh
    from graph_app.online import catalog_online_rebuild
    from graph_app.training import embeddings_train
    from scoring_app.models import ModelVersion
    from scoring_app.selectors import model_version_active
    from scoring_app.services import models_serving_publish
    from scoring_app.training import ranker_train
    from signals_app.popularity import popularity_refresh

    # The ingest script and the feature store read catalog facts from Redis: make sure they match the catalog.
    catalog_online_rebuild()
    demo_loaded = False
    if with_demo_data and not Item.objects.exists():
        report = demo_data_load()
        logger.info("bootstrap.demo_loaded", extra=report.__dict__)
        demo_loaded = True
    model_trained = False
    if model_version_active(kind=ModelVersion.Kind.EMBEDDINGS) is None and Item.objects.exists():
        embeddings_train()
        neighbourhoods_refresh()
        popularity_refresh()
        model_trained = True
    if model_version_active(kind=ModelVersion.Kind.RANKER) is None and Item.objects.exists():
        # The first ranker learns from the interactions in the log (there are no impressions yet).
        ranker_train()
        model_trained = True
    models_serving_publish()
    from surface_app.configuration import surface_defaults_install

    surface_defaults_install()
    schedules_install_defaults()
    password, raw_key = _console_credentials()
    return BootstrapReport(demo_loaded, model_trained, password, raw_key)
