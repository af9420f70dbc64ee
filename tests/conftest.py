from __future__ import annotations

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from personalization import services as key_services
from personalization.redis_client import get_control_redis, redis_client_for


@pytest.fixture(autouse=True)
def clean_redis() -> redis.Redis:
    """Each test starts from an empty Redis database (the tests' own embedded Valkey unless REDIS_URL is set)."""
    client = get_control_redis()  # a flush may take longer than the hot path's timeout
    client.flushdb()
    key_services.api_key_caches_clear()
    return client


@pytest.fixture
def raw_api_key(db: None) -> str:
    """An admin key: it may call every endpoint, as any key could before scopes (tests/personalization/test_access.py
    holds each scope to its endpoints)."""
    return key_services.api_key_create(name="test storefront", scope="admin").raw_key


@pytest.fixture
def api_client(raw_api_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_api_key}")
    return client


@pytest.fixture
def anonymous_client() -> APIClient:
    return APIClient()


@pytest.fixture
def redis_url() -> str:
    return settings.REDIS_URL


def dead_redis() -> redis.Redis:
    """A real client pointed at a port where nothing listens: how the platform sees a Redis outage."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return redis_client_for(f"redis://127.0.0.1:{port}/0")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Connections opened by worker threads (Channels' database_sync_to_async, live servers) would block dropping
    the test database at the end: end them first."""
    yield
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _forget_linked_sessions():
    """The ingest path remembers sessions it linked; Redis is emptied between tests, so must this be."""
    from signals_app import services

    services._linked_sessions.clear()


@pytest.fixture(autouse=True)
def _forget_catalog_facts():
    """Serving keeps the catalog facts it read per catalog version; Redis is emptied between tests."""
    from graph_app.features.online import catalog_facts_forget

    catalog_facts_forget()


@pytest.fixture(autouse=True)
def _forget_popular_items():
    """Serving shares the popular items it read for a second; Redis is emptied between tests."""
    from scoring_app.engine.retrieval import popular_shared_forget

    popular_shared_forget()


@pytest.fixture(autouse=True)
def _forget_served_slates():
    """Serving remembers each user's last slate in process memory (a fallback of last resort): per test."""
    from surface_app.serving.rules import snapshot_forget
    from surface_app.serving.slates import slates_forget

    slates_forget()
    snapshot_forget()
    yield
    slates_forget()


@pytest.fixture
def vacuumed_vector_index(django_db_blocker):
    """Tests whose transactions roll back leave dead item rows in the vector index; many of them share the same
    unit vectors, so an approximate query near those vectors can spend its scan on dead entries and return fewer
    neighbours than exist. Tests that assert exact neighbours vacuum the table first (in autocommit, on a
    connection of their own: VACUUM cannot run in the test's transaction)."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    with django_db_blocker.unblock(), psycopg.connect(**params, autocommit=True) as own:
        # Never wait long on a lock the test's own transaction might hold.
        own.execute("SET lock_timeout = '5s'")
        own.execute("VACUUM (TRUNCATE false) graph_app_item")


@pytest.fixture(autouse=True)
def _forget_serving_models():
    """Serving processes keep the models they loaded; a test that trains and serves must not leave its models to
    the next test's shelves."""
    from scoring_app.engine import registry

    registry.models_forget()
    yield
    registry.models_forget()
