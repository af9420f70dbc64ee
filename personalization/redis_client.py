"""The process-wide Redis client for the hot path.

Short timeouts and no backoff: a Redis that does not answer must turn into a fast 503 or a degraded answer,
never a hang (redis-py's default retries with backoff for seconds). Keys are built in
`personalization.redis_keys` with hash tags so that one user's keys share a Redis Cluster slot.
"""

from __future__ import annotations

import functools

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

HOT_PATH_SOCKET_TIMEOUT_SECONDS = 0.25
HOT_PATH_CONNECT_TIMEOUT_SECONDS = 0.1
HOT_PATH_RETRIES = 1


def redis_client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=HOT_PATH_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=HOT_PATH_CONNECT_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), HOT_PATH_RETRIES),
        health_check_interval=30,
    )


@functools.cache
def get_redis() -> redis.Redis:
    return redis_client_for(settings.REDIS_URL)
