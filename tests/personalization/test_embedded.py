"""The embedded servers from the wheels: start, attach, persist, stop (each in its own temporary folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import psutil
import psycopg
import pytest
import redis

from personalization import embedded
from tests.embedded_test_env import PROJECT_ROOT
from tests.integration_helpers import replica_replay_wait

pytestmark = pytest.mark.integration


def test_valkey_starts_once_is_shared_and_keeps_data_across_restarts(tmp_path):
    url = embedded.ensure_valkey(tmp_path)
    try:
        assert embedded.ensure_valkey(tmp_path) == url  # a second process attaches to the same server
        client = redis.Redis.from_url(url)
        client.set("survives", "restart")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        # Item counters of a few hundred fields are hash tables, read field by field in O(1) (embedded.VALKEY_SETTINGS).
        assert client.config_get("hash-max-listpack-entries") == {"hash-max-listpack-entries": "128"}

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


def _kill_and_wait(pid: int) -> None:
    # The server and whatever it forked (PostgreSQL's background processes): all gone before a restart.
    server = psutil.Process(pid)
    processes = [server, *server.children(recursive=True)]
    server.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
    assert not any(process.is_running() and process.status() != psutil.STATUS_ZOMBIE for process in processes)


def test_a_killed_valkey_comes_back_on_the_same_port(tmp_path):
    url = embedded.ensure_valkey(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        client.set("before", "kill")  # an open connection: the killed server leaves it in TIME_WAIT
        killed_pid = int((tmp_path / "valkey" / "valkey.pid").read_text())
        _kill_and_wait(killed_pid)
        assert not embedded.valkey_running(tmp_path)

        assert embedded.ensure_valkey(tmp_path) == url
        assert embedded.valkey_running(tmp_path)
        assert int((tmp_path / "valkey" / "valkey.pid").read_text()) != killed_pid
        assert client.ping()  # the client holding the old URL reconnects
    finally:
        embedded.stop_valkey(tmp_path)


def test_a_paused_valkey_is_waited_for_not_replaced(tmp_path):
    url = embedded.ensure_valkey(tmp_path)
    pid = int((tmp_path / "valkey" / "valkey.pid").read_text())
    try:
        os.kill(pid, signal.SIGSTOP)
        assert embedded.valkey_running(tmp_path)  # paused is alive: the supervisor leaves it alone
        resume = threading.Timer(0.5, os.kill, (pid, signal.SIGCONT))
        resume.start()
        assert embedded.ensure_valkey(tmp_path) == url
        assert int((tmp_path / "valkey" / "valkey.pid").read_text()) == pid
    finally:
        os.kill(pid, signal.SIGCONT)
        embedded.stop_valkey(tmp_path)


def test_a_killed_postgres_comes_back_on_the_same_socket_and_stop_stops_the_new_one(tmp_path):
    url = embedded.ensure_postgres(tmp_path)
    try:
        _kill_and_wait(int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0]))
        assert not embedded.postgres_running(tmp_path)

        # Restarted by another process (a platform child importing the settings): this one's handle is stale.
        restarted = subprocess.run(
            [sys.executable, "-c", f"from pathlib import Path; from personalization import embedded; "
             f"print(embedded.ensure_postgres(Path({str(tmp_path)!r})))"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert restarted.stdout.strip() == url
        assert embedded.ensure_postgres(tmp_path) == url
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        embedded.stop_postgres(tmp_path)
    assert not embedded.postgres_running(tmp_path)


def test_postgres_replica_streams_survives_a_stop_and_is_removed_with_its_slot(tmp_path):
    primary_url = embedded.ensure_postgres(tmp_path)
    try:
        replica_url = embedded.ensure_postgres_replica(tmp_path, primary_url=primary_url)
        assert f"host={tmp_path / 'pg-replica'}" in replica_url
        pid = int((tmp_path / "pg-replica" / "postmaster.pid").read_text().split()[0])
        assert embedded.ensure_postgres_replica(tmp_path, primary_url=primary_url) == replica_url  # attaches
        assert int((tmp_path / "pg-replica" / "postmaster.pid").read_text().split()[0]) == pid
        with psycopg.connect(primary_url, autocommit=True) as primary:
            primary.execute("CREATE TABLE facts (value int)")
            primary.execute("INSERT INTO facts VALUES (1)")
        replica_replay_wait(primary_url=primary_url, replica_url=replica_url)
        with psycopg.connect(replica_url, autocommit=True) as replica:
            assert replica.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            assert replica.execute("SELECT value FROM facts").fetchall() == [(1,)]

        # Stopped, the slot keeps the WAL it misses; started again, the same copy (no new base backup) catches up.
        copy_inode = (tmp_path / "pg-replica").stat().st_ino
        embedded.stop_postgres_replica(tmp_path)
        assert not embedded.postgres_replica_running(tmp_path)
        with psycopg.connect(primary_url, autocommit=True) as primary:
            primary.execute("INSERT INTO facts VALUES (2)")
            primary.execute("SELECT pg_switch_wal()")
            primary.execute("CHECKPOINT")
        assert embedded.ensure_postgres_replica(tmp_path, primary_url=primary_url) == replica_url
        assert (tmp_path / "pg-replica").stat().st_ino == copy_inode
        replica_replay_wait(primary_url=primary_url, replica_url=replica_url)
        with psycopg.connect(replica_url, autocommit=True) as replica:
            assert replica.execute("SELECT value FROM facts ORDER BY value").fetchall() == [(1,), (2,)]

        embedded.remove_postgres_replica(tmp_path, primary_url=primary_url)
        assert not (tmp_path / "pg-replica").exists()
        with psycopg.connect(primary_url, autocommit=True) as primary:
            assert primary.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    finally:
        embedded.stop_postgres_replica(tmp_path)
        embedded.stop_postgres(tmp_path)
