from __future__ import annotations

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from personalization import services as key_services
from personalization.redis_client import get_redis


@pytest.fixture(autouse=True)
def clean_redis() -> redis.Redis:
    """Each test starts from an empty Redis database (the tests' own embedded Valkey unless REDIS_URL is set)."""
    client = get_redis()
    client.flushdb()
    key_services._verified_keys.clear()
    return client


@pytest.fixture
def raw_api_key(db: None) -> str:
    return key_services.api_key_create(name="test storefront").raw_key


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
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.2, socket_connect_timeout=0.1)
