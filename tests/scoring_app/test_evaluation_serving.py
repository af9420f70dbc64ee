from __future__ import annotations

import math

from django.conf import settings

from operations.evaluation.serving import serving_without_deadlines
from personalization.redis_client import CONTROL_SOCKET_TIMEOUT_SECONDS, get_redis
from scoring_app.engine.bandit import exploration_window


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
    exploration, reseed = settings.SCORE_RANKER_EXPLORATION_SHARE, settings.SCORE_EXPLORATION_RESEED_SECONDS
    assert _connection_timeout() == settings.REDIS_HOT_PATH_TIMEOUT_SECONDS

    with serving_without_deadlines():
        assert settings.SCORE_RETRIEVAL_THREADS == 0
        assert math.inf == settings.SCORE_RETRIEVAL_DEADLINE_FACTOR
        assert _connection_timeout() == CONTROL_SOCKET_TIMEOUT_SECONDS
        # Exploration as shoppers get it, its random numbers held for the run: one window all run long.
        assert settings.SCORE_RANKER_EXPLORATION_SHARE == exploration > 0
        windows = {
            exploration_window(
                user_key="u1", placement="home", now=now, seconds=settings.SCORE_EXPLORATION_RESEED_SECONDS
            )
            for now in (1.7e9, 1.7e9 + 3600, 1.7e9 + 86400 * 400)
        }
        assert len(windows) == 1

    assert (threads, factor) == (settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR)
    assert (exploration, reseed) == (settings.SCORE_RANKER_EXPLORATION_SHARE, settings.SCORE_EXPLORATION_RESEED_SECONDS)
    assert _connection_timeout() == settings.REDIS_HOT_PATH_TIMEOUT_SECONDS
