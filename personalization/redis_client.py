"""The process-wide Redis client for the hot path.

Short timeouts: a Redis that does not answer must turn into a fast 503 or a degraded answer, never a hang.
Keys are built in `personalization.redis_keys` with hash tags so that one user's keys share a Redis Cluster slot.
"""

from __future__ import annotations

import functools

import redis
from django.conf import settings

HOT_PATH_SOCKET_TIMEOUT_SECONDS = 0.25
HOT_PATH_CONNECT_TIMEOUT_SECONDS = 0.1


@functools.cache
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=HOT_PATH_SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=HOT_PATH_CONNECT_TIMEOUT_SECONDS,
        health_check_interval=30,
    )
