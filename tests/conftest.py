from __future__ import annotations

import importlib

import pytest
import redis
from django.conf import settings
from redis.cluster import RedisCluster
from rest_framework.test import APIClient

from personalization import services as key_services
from personalization.process_caches import process_caches_reset
from personalization.redis_client import get_control_redis, redis_client_for

# Every module that keeps a process cache, imported so that its reset is registered before the first test.
PROCESS_CACHE_MODULES = (
    "graph_app.catalog_bulk",
    "graph_app.catalog_import",
    "graph_app.features.online",
    "graph_app.features.user_affinity",
    "graph_app.item_rows",
    "graph_app.item_vector_index",
    "graph_app.state.dedupe",
    "graph_app.model_registry.selectors",
    "graph_app.state.event_types",
    "personalization.db_router",
    "personalization.services",
    "scoring_app.engine.registry",
    "scoring_app.engine.retrieval",
    "signals_app.services",
    "surface_app.serving.rules",
    "surface_app.serving.slates",
)
for _module in PROCESS_CACHE_MODULES:
    importlib.import_module(_module)


@pytest.fixture(autouse=True)
def clean_redis() -> redis.Redis:
    """Each test starts from an empty Redis database (the tests' own embedded Valkey unless REDIS_URL is set)."""
    client = get_control_redis()  # a flush may take longer than the hot path's timeout
    if settings.REDIS_CLUSTER_NODES:
        # The masters as they are now: a test may have killed one, whose replica took over.
        client.nodes_manager.initialize()  # type: ignore[attr-defined]
        client.flushdb(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]  # each master its slots
    else:
        client.flushdb()
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
def _process_caches_reset():
    """Every cache a process keeps in memory starts each test empty: Redis and the database are emptied between
    tests, so nothing a cache remembers may survive one. What a test served or loaded (last slates, models) is
    dropped after it too, so that it never reaches another test's shelves."""
    process_caches_reset()
    yield
    process_caches_reset(["surface.last_slates", "score.serving_models"])


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
