"""Lag-tolerant reads on a real streaming replica of the test primary: routing, replay, fallback and return.

The replica copies the whole primary, so the test database pytest-django made is there too; tests commit their rows
(`transactional_db`) so that the replica can replay them."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import OperationalError, connections, router, transaction
from django.utils import timezone

from graph_app.interface import item_content_matrix
from graph_app.models import Item
from graph_app.state.models import Impression
from personalization import db_router, embedded
from personalization.db_router import lag_tolerant_reads, read_connection
from rules_admin.dashboard_selectors import placement_kpis_list
from tests.factories import ItemFactory
from tests.integration_helpers import replica_replay_wait
from tests.integration_helpers import test_database_url as primary_test_database_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True, databases=["default", "replica_test"])]

# Not replica_0: a run with DATABASE_REPLICA_URLS set has that alias already (this module then skips).
ALIAS = "replica_test"
REPLICA_NAME = "pg-replica-test"


@pytest.fixture(scope="module")
def replica_folder(django_db_setup, django_db_blocker) -> Path:
    """A streaming replica of this worker's embedded primary, registered as a replica alias of the test database
    for this module (before pytest-django checks each test's databases) and removed after it."""
    if os.environ.get("DATABASE_URL") or settings.DATABASE_REPLICA_URLS:
        pytest.skip("the replica is made from the embedded primary, and is the only one")
    data_dir = Path(settings.DATA_DIR)
    embedded.ensure_postgres_replica(data_dir, primary_url=settings.DATABASE_URL, name=REPLICA_NAME)
    config = copy.deepcopy(connections["default"].settings_dict)
    config["HOST"] = str(data_dir / REPLICA_NAME)
    config["OPTIONS"]["connect_timeout"] = settings.DATABASE_REPLICA_CONNECT_TIMEOUT_SECONDS
    # A test mirror of default in Django's terms: its flush after each test leaves the read-only replica alone.
    config["TEST"] = {**config["TEST"], "MIRROR": "default"}
    connections.settings[ALIAS] = config
    assert ALIAS in settings.DATABASES  # the router reads the aliases from settings
    yield data_dir / REPLICA_NAME
    del connections.settings[ALIAS]
    embedded.remove_postgres_replica(data_dir, primary_url=settings.DATABASE_URL, name=REPLICA_NAME)


@pytest.fixture
def replica(replica_folder, transactional_db, settings) -> str:
    """The running replica (a test may have stopped it) with an empty health cache; its URL is returned."""
    embedded.ensure_postgres_replica(replica_folder.parent, primary_url=settings.DATABASE_URL, name=REPLICA_NAME)
    settings.DATABASE_REPLICA_HEALTH_CACHE_SECONDS = 60
    db_router.replica_health_reset()
    yield f"postgresql://postgres:@/{connections[ALIAS].settings_dict['NAME']}?host={replica_folder}"
    connections[ALIAS].close()
    db_router.replica_health_reset()


def _replayed(replica_url: str) -> None:
    replica_replay_wait(primary_url=primary_test_database_url(), replica_url=replica_url)


def _fallbacks(reason: str) -> float:
    return db_router.REPLICA_FALLBACKS.labels(reason=reason)._value.get()


def test_a_lag_tolerant_read_runs_on_the_replica_and_sees_committed_rows_once_replayed(replica):
    ItemFactory(external_id="sku-replicated")
    _replayed(replica)

    with lag_tolerant_reads():
        assert Item.objects.all().db == ALIAS
        with read_connection().cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery()")
            assert cursor.fetchone() == (True,)
        assert list(Item.objects.values_list("external_id", flat=True)) == ["sku-replicated"]


def test_writes_inside_the_context_and_reads_outside_it_go_to_the_primary(replica):
    with lag_tolerant_reads():
        item = Item.objects.create(external_id="sku-written")
        assert item._state.db == "default"
        assert router.db_for_write(Item) == "default"
        with transaction.atomic():
            # Inside a transaction on the primary a read must see its own uncommitted rows.
            assert Item.objects.filter(external_id="sku-written").db == "default"
    assert Item.objects.all().db == "default"
    with read_connection().cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        assert cursor.fetchone() == (False,)
    assert router.allow_migrate(ALIAS, "graph_app") is False
    assert router.allow_migrate("default", "graph_app") is True


def test_a_dashboard_reads_through_the_replica(replica):
    now = timezone.now()
    day = now.date()
    Impression.objects.create(
        request_id="slate-1", user_key="u:1", placement="home", item_id="sku-1", slot=0, served_at=now
    )
    _replayed(replica)
    # With replay paused, a row committed now is on the primary only: the dashboard shows what the replica has.
    with psycopg.connect(replica, autocommit=True) as replica_control:
        replica_control.execute("SELECT pg_wal_replay_pause()")
        try:
            Impression.objects.create(
                request_id="slate-2", user_key="u:2", placement="home", item_id="sku-1", slot=0, served_at=now
            )

            on_replica = placement_kpis_list(first_day=day, last_day=day)
            with transaction.atomic():
                on_primary = placement_kpis_list(first_day=day, last_day=day)
        finally:
            replica_control.execute("SELECT pg_wal_replay_resume()")

    assert [(row.placement, row.impressions) for row in on_replica.rows] == [("home", 1)]
    assert [(row.placement, row.impressions) for row in on_primary.rows] == [("home", 2)]
    assert db_router.replica_health(ALIAS).healthy


@lag_tolerant_reads()
def _items_listed() -> list[str]:
    return list(Item.objects.order_by("external_id").values_list("external_id", flat=True))


def test_a_stopped_replica_falls_back_to_the_primary_and_is_used_again_once_back(replica, settings):
    ItemFactory(external_id="sku-1")
    _replayed(replica)
    assert _items_listed() == ["sku-1"]  # the replica, healthy and cached so
    with lag_tolerant_reads():
        assert read_connection().alias == ALIAS
    errors, unhealthy = _fallbacks("error"), _fallbacks("unhealthy")

    embedded.stop_postgres_replica(settings.DATA_DIR, name=REPLICA_NAME)
    ItemFactory(external_id="sku-2")
    now = timezone.now()
    Impression.objects.create(
        request_id="slate-1", user_key="u:1", placement="home", item_id="sku-1", slot=0, served_at=now
    )
    # The cached probe still says healthy: the dashboard's read fails on the replica and runs again on the primary.
    kpis = placement_kpis_list(first_day=now.date(), last_day=now.date())
    assert [(row.placement, row.impressions) for row in kpis.rows] == [("home", 1)]
    assert _fallbacks("error") == errors + 1
    assert not db_router.replica_health(ALIAS).healthy
    # Now known unhealthy: the next reads go straight to the primary.
    assert _items_listed() == ["sku-1", "sku-2"]
    assert _fallbacks("unhealthy") > unhealthy
    assert _fallbacks("error") == errors + 1

    embedded.ensure_postgres_replica(settings.DATA_DIR, primary_url=settings.DATABASE_URL, name=REPLICA_NAME)
    _replayed(replica)
    with lag_tolerant_reads():
        assert read_connection().alias == "default"  # the unhealthy answer is still cached
    settings.DATABASE_REPLICA_HEALTH_CACHE_SECONDS = 0  # the cache window has passed
    with lag_tolerant_reads():
        assert read_connection().alias == ALIAS
        with read_connection().cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery(), count(*) FROM graph_app_item")
            assert cursor.fetchone() == (True, 2)


def test_a_replica_is_caught_up_when_idle_and_lagging_when_replay_falls_behind(replica, settings):
    settings.DATABASE_REPLICA_MAX_LAG_SECONDS = 0
    _replayed(replica)
    # Caught up: healthy however old its last replayed transaction is.
    with lag_tolerant_reads():
        assert read_connection().alias == ALIAS
    assert db_router.replica_health(ALIAS).lag_seconds == 0

    with psycopg.connect(replica, autocommit=True) as replica_control:
        replica_control.execute("SELECT pg_wal_replay_pause()")
        try:
            ItemFactory(external_id="sku-unreplayed")
            _received(replica)  # received, not replayed: the lag is the age of the last replayed transaction
            db_router.replica_health_reset()
            with lag_tolerant_reads():
                assert read_connection().alias == "default"
            assert db_router.replica_health(ALIAS).lag_seconds > 0
        finally:
            replica_control.execute("SELECT pg_wal_replay_resume()")


def _received(replica_url: str) -> None:
    with psycopg.connect(primary_test_database_url(), autocommit=True) as primary:
        target = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with psycopg.connect(replica_url, autocommit=True) as replica:
        while not replica.execute("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn", [target]).fetchone()[0]:
            replica.execute("SELECT pg_sleep(0.02)")


def test_an_error_on_the_primary_is_not_taken_for_a_replica_failure(replica):
    calls = []

    @lag_tolerant_reads()
    def read_then_fail_on_the_primary() -> None:
        calls.append(list(Item.objects.all()))  # on the replica
        with connections["default"].cursor() as cursor:
            cursor.execute("SET statement_timeout = 1")
            try:
                cursor.execute("SELECT pg_sleep(1)")
            finally:
                cursor.execute("SET statement_timeout = 0")

    errors = _fallbacks("error")
    with pytest.raises(OperationalError):
        read_then_fail_on_the_primary()
    assert len(calls) == 1  # not run again
    assert _fallbacks("error") == errors
    assert db_router.replica_health(ALIAS).healthy


def test_a_training_read_goes_through_the_replica(replica):
    ItemFactory(external_id="sku-1", title="red shoe")
    _replayed(replica)
    with psycopg.connect(replica, autocommit=True) as replica_control:
        replica_control.execute("SELECT pg_wal_replay_pause()")
        try:
            ItemFactory(external_id="sku-2", title="blue shoe")
            on_replica = item_content_matrix()  # the embeddings' content read
            with transaction.atomic():
                on_primary = item_content_matrix()
        finally:
            replica_control.execute("SELECT pg_wal_replay_resume()")

    assert on_replica.shape[0] == 1
    assert on_primary.shape[0] == 2
