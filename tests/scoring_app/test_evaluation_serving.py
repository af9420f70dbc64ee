from __future__ import annotations

import math

from django.conf import settings

from operations.evaluation.serving import serving_without_deadlines
from personalization.redis_client import CONTROL_SOCKET_TIMEOUT_SECONDS, get_redis


def _connection_timeout() -> float:
    connection = get_redis().connection_pool.get_connection()
    try:
        connection.send_command("PING")
        assert connection.read_response() in (b"PONG", "PONG")
        return connection.socket_timeout
    finally:
        get_redis().connection_pool.release(connection)


def test_evaluations_serve_without_deadlines_and_restore_them():
    threads, factor = settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR
    exploration = settings.SCORE_RANKER_EXPLORATION_SHARE
    assert _connection_timeout() == settings.REDIS_HOT_PATH_TIMEOUT_SECONDS

    with serving_without_deadlines():
        assert settings.SCORE_RETRIEVAL_THREADS == 0
        assert math.inf == settings.SCORE_RETRIEVAL_DEADLINE_FACTOR
        assert _connection_timeout() == CONTROL_SOCKET_TIMEOUT_SECONDS
        assert settings.SCORE_RANKER_EXPLORATION_SHARE == 0.0  # the ranker's own order, the same every hour

    assert (threads, factor) == (settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR)
    assert exploration == settings.SCORE_RANKER_EXPLORATION_SHARE > 0
    assert _connection_timeout() == settings.REDIS_HOT_PATH_TIMEOUT_SECONDS
