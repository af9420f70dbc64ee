"""First-run set-up of a platform: demo data, first model, default schedules, console login, a demo API key.

Every step is idempotent, so the run command calls it on every start and a second start is fast. The run command
passes a `step` reporter that numbers the steps and shows their progress and time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

logger = logging.getLogger(__name__)

ADMIN_USERNAME = "admin"
# The steps platform_bootstrap reports, in order.
BOOTSTRAP_STEPS = (
    "Loading the demo catalog",
    "Training the item embeddings",
    "Training the ranker",
    "Installing placements, schedules and the console login",
)
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
    admin_password: str | None  # None: changed since the first run (not retrievable)
    demo_api_key: str


@dataclass
class StepOutcome:
    """What a set-up step says when it ends: a short note, and whether it had nothing to do."""

    note: str = ""
    skipped: bool = False

    def skip(self, reason: str) -> None:
        self.note, self.skipped = reason, True


StepReporter = Callable[[str], AbstractContextManager[StepOutcome]]


@contextlib.contextmanager
def _step_unreported(_title: str) -> Iterator[StepOutcome]:
    yield StepOutcome()


@dataclass(frozen=True)
class ConsoleCredentials:
    admin_password: str | None  # None: changed since the first run
    demo_api_key: str


def credentials_file() -> Path:
    """Where the first run keeps the admin password and demo API key (0600, in the ignored data folder)."""
    return Path(settings.DATA_DIR) / "console-credentials.json"


def console_credentials_read() -> ConsoleCredentials | None:
    """The credentials made on the first run, if this database still has that admin (None: none made yet)."""
    path = credentials_file()
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    user = get_user_model().objects.filter(username=ADMIN_USERNAME).first()
    if user is None:  # another database than the one they were made for
        return None
    password = stored["admin_password"] if user.check_password(stored["admin_password"]) else None
    return ConsoleCredentials(password, stored["demo_api_key"])


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


def _console_credentials() -> ConsoleCredentials:
    """The admin password and demo API key made on the first run (kept in the ignored data folder)."""
    from personalization.services import api_key_create

    stored = console_credentials_read()
    if stored is not None:
        return stored
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
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    # Created readable by its owner only, not chmod-ed after being written under the umask.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as secrets_out:
        secrets_out.write(json.dumps({"admin_password": password, "demo_api_key": raw_key}))
    return ConsoleCredentials(password, raw_key)


def platform_bootstrap(*, with_demo_data: bool = True, step: StepReporter = _step_unreported) -> BootstrapReport:
    from graph_app.interface import (
        ModelKind,
        catalog_has_items,
        catalog_online_rebuild,
        embeddings_train,
        model_version_active,
        models_serving_publish,
        neighbourhoods_refresh,
    )
    from graph_app.state.interface import popularity_refresh
    from operations.demo import demo_data_load
    from scoring_app.interface import ranker_train

    demo, embeddings, ranker, finishing = BOOTSTRAP_STEPS
    demo_loaded = False
    interrupted_load = Path(settings.DATA_DIR) / "demo-loading"
    with step(demo) as outcome:
        # The ingest script and the feature store read catalog facts from Redis: make sure they match the catalog.
        catalog_online_rebuild()
        if not with_demo_data:
            outcome.skip("skipped (--no-demo)")
        elif catalog_has_items():
            cut_short = f"skipped, but a demo load was cut short: delete {settings.DATA_DIR} to load all of it"
            outcome.skip(cut_short if interrupted_load.exists() else "skipped: the catalog has items")
        else:
            # Present while loading: the catalog of a load that Ctrl-C cut short is not taken for the whole demo.
            interrupted_load.parent.mkdir(parents=True, exist_ok=True)
            interrupted_load.touch()
            report = demo_data_load()
            interrupted_load.unlink()
            logger.info("bootstrap.demo_loaded", extra=report.__dict__)
            demo_loaded = True
            outcome.note = f"{report.items:,} items, {report.users:,} shoppers, {report.events_accepted:,} purchases"
    model_trained = False
    with step(embeddings) as outcome:
        if model_version_active(kind=ModelKind.EMBEDDINGS) is not None:
            outcome.skip("skipped: a model is active")
        elif not catalog_has_items():
            outcome.skip("skipped: no items")
        else:
            embeddings_train()
            neighbourhoods_refresh()
            popularity_refresh()
            model_trained = True
    with step(ranker) as outcome:
        if model_version_active(kind=ModelKind.RANKER) is not None:
            outcome.skip("skipped: a model is active")
        elif not catalog_has_items():
            outcome.skip("skipped: no items")
        else:
            # The first ranker learns from the interactions in the log (there are no impressions yet), with the
            # default settings: the search doubled a first start's wait (81 s against 43 on a busy machine) for the
            # same gate nDCG@10 on the demo (0.158); the scheduled retrain searches.
            ranker_train(search=False)
            model_trained = True
    with step(finishing):
        models_serving_publish()
        from surface_app.interface import surface_defaults_install

        surface_defaults_install()
        schedules_install_defaults()
        credentials = _console_credentials()
    return BootstrapReport(demo_loaded, model_trained, credentials.admin_password, credentials.demo_api_key)
