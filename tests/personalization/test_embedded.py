"""The embedded servers from the wheels: start, attach, persist, stop (each in its own temporary folder)."""

from __future__ import annotations

import psycopg
import pytest
import redis

from personalization import embedded

pytestmark = pytest.mark.integration


def test_valkey_starts_once_is_shared_and_keeps_data_across_restarts(tmp_path):
    url = embedded.ensure_valkey(tmp_path)
    try:
        assert embedded.ensure_valkey(tmp_path) == url  # a second process attaches to the same server
        client = redis.Redis.from_url(url)
        client.set("survives", "restart")
        assert client.config_get("appendonly") == {"appendonly": "yes"}

        embedded.stop_valkey(tmp_path)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=0.2).ping()

        restarted = embedded.ensure_valkey(tmp_path)
        assert redis.Redis.from_url(restarted).get("survives") == b"restart"
    finally:
        embedded.stop_valkey(tmp_path)


def test_postgres_starts_with_pgvector_and_stops(tmp_path):
    url = embedded.ensure_postgres(tmp_path)
    try:
        assert f"host={tmp_path}" in url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            distance = conn.execute("SELECT '[1,0]'::vector <=> '[0,1]'::vector").fetchone()[0]
        assert distance == pytest.approx(1.0)
        assert embedded.ensure_postgres(tmp_path) == url
    finally:
        embedded.stop_postgres(tmp_path)
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
