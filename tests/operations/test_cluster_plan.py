"""Cluster mode's plan (operations/cluster.py): ports, command lines, every child's environment and nginx's
configuration, read without starting anything (nginx itself checks the configuration when it is installed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from operations import cluster

SIZES = cluster.ClusterSizes(web=3, web_workers=2, ws=2, events_workers=2)


def _plan(host: str = "127.0.0.1") -> cluster.ClusterPlan:
    return cluster.plan_make(host=host, port=8080, sizes=SIZES, internal_ports=range(9001, 9100))


def test_the_web_processes_then_the_websocket_servers_take_the_internal_ports_in_order():
    plan = _plan()

    assert (plan.port, plan.web_ports, plan.ws_ports) == (8080, (9001, 9002, 9003), (9004, 9005))
    assert plan.web_names() == ["web-1", "web-2", "web-3"]
    assert plan.ws_names() == ["ws-1", "ws-2"]


def test_a_port_given_twice_is_refused():
    with pytest.raises(ValueError, match="a port of its own"):
        cluster.plan_make(host="127.0.0.1", port=9001, sizes=SIZES, internal_ports=range(9001, 9100))


def test_free_ports_are_distinct():
    ports = cluster.free_ports(8)

    assert len(set(ports)) == 8


def test_every_process_has_its_command_line_each_web_and_websocket_server_on_its_port(tmp_path):
    commands = cluster.process_commands(_plan(), bin_dir="/venv/bin", hostname="box", nginx_dir=tmp_path)

    assert list(commands) == [
        "web-1", "web-2", "web-3", "ws-1", "ws-2", "events-1", "events-2", "worker", "beat", "nginx",
    ]  # fmt: skip
    assert commands["web-2"][:2] == ["/venv/bin/gunicorn", "config.wsgi:application"]
    assert commands["web-2"][commands["web-2"].index("--bind") + 1] == "127.0.0.1:9002"
    assert commands["web-2"][commands["web-2"].index("--workers") + 1] == "2"
    assert commands["ws-2"][-3:] == ["9005", "--log-level", "warning"]
    # One consumer group, one consumer per worker: distinct node names.
    assert [commands[name][-1] for name in ("events-1", "events-2", "worker")] == [
        "events-1@box", "events-2@box", "worker@box",
    ]  # fmt: skip
    assert commands["events-1"][commands["events-1"].index("--queues") + 1] == "events"
    assert commands["worker"][commands["worker"].index("--queues") + 1] == "celery"
    assert commands["nginx"] == [
        "nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log"),
    ]  # fmt: skip


def test_every_child_gets_the_cluster_servers_and_the_public_addresses_through_nginx(tmp_path, monkeypatch):
    monkeypatch.delenv("EVENT_PARTITIONS", raising=False)
    servers = cluster.servers_env(
        database_url="postgresql://p", replica_urls=["postgresql://r"], broker_url="redis://127.0.0.1:7000/0",
        valkey_nodes=["127.0.0.1:7001", "127.0.0.1:7002"],
    )  # fmt: skip

    env = cluster.children_env(
        {"PATH": "/bin"}, plan=_plan(), servers=servers, data_dir=tmp_path, metrics_dir=tmp_path / "m"
    )

    assert env == {
        "PATH": "/bin",
        "DATABASE_URL": "postgresql://p",
        "DATABASE_REPLICA_URLS": "postgresql://r",
        "REDIS_URL": "redis://127.0.0.1:7000/0",
        "CELERY_BROKER_URL": "redis://127.0.0.1:7000/0",
        "REDIS_CLUSTER_NODES": "127.0.0.1:7001,127.0.0.1:7002",
        "CHANNEL_LAYER_HOSTS": "redis://127.0.0.1:7001/0,redis://127.0.0.1:7002/0",
        "EVENT_PARTITIONS": "3",
        "PERSONALIZATION_DATA_DIR": str(tmp_path),
        "WEBSOCKET_PUBLIC_URL": "ws://127.0.0.1:8080",
        "DJANGO_CSRF_TRUSTED_ORIGINS": "http://127.0.0.1:8080",
        "API_TRUSTED_PROXY_COUNT": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m"),
    }
    assert set(servers) == set(cluster.SERVER_SETTINGS)


def test_the_plan_is_kept_for_cluster_info(tmp_path):
    cluster.plan_store(tmp_path, _plan(), {"DATABASE_URL": "postgresql://p"})

    assert cluster.plan_read(tmp_path) == (_plan(), {"DATABASE_URL": "postgresql://p"})
    assert cluster.plan_read(tmp_path / "nowhere") is None


def test_nginx_spreads_http_over_the_web_processes_and_ws_over_the_websocket_servers(tmp_path):
    config = cluster.nginx_config(_plan(), folder=tmp_path, as_root=False)

    web = config[config.index("upstream web {") : config.index("upstream ws {")]
    ws = config[config.index("upstream ws {") : config.index("server {")]
    assert [line.split()[1] for line in web.splitlines() if line.strip().startswith("server ")] == [
        "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003",
    ]  # fmt: skip
    assert [line.split()[1] for line in ws.splitlines() if line.strip().startswith("server ")] == [
        "127.0.0.1:9004", "127.0.0.1:9005",
    ]  # fmt: skip
    assert "listen 127.0.0.1:8080;" in config
    # A 503 is the platform's answer, not a dead process: retried and counted, it would mark every process down.
    assert "proxy_next_upstream error timeout non_idempotent;" in config
    assert "proxy_set_header Upgrade $http_upgrade;" in config
    assert f"pid {tmp_path / 'nginx.pid'};" in config
    assert "user root;" not in config
    assert "user root;" in cluster.nginx_config(_plan(), folder=tmp_path, as_root=True)


def test_the_processes_table_names_every_process_and_server():
    lines = cluster.processes_table(
        _plan(), valkey_nodes=[("127.0.0.1:7001", "master")], servers={"DATABASE_REPLICA_URLS": "postgresql://r"}
    )

    assert [line.split()[0] for line in lines] == [
        "nginx", "web-1", "web-2", "web-3", "ws-1", "ws-2", "events-1", "events-2", "worker", "beat", "valkey",
        "broker", "postgres", "postgres",
    ]  # fmt: skip
    assert "127.0.0.1:9004" in lines[4] and "cluster node, master" in lines[10]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (make cluster installs it)")
def test_nginx_accepts_the_configuration(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(cluster.nginx_config(_plan(), folder=tmp_path, as_root=True))

    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_cluster_commands_get_the_cluster_folder_and_the_others_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONALIZATION_DATA_DIR", str(tmp_path))
    environ = {"PERSONALIZATION_DATA_DIR": str(tmp_path)}

    cluster.command_environ_prepare(["manage.py", "run_platform"], environ)
    assert environ == {"PERSONALIZATION_DATA_DIR": str(tmp_path)}
    cluster.command_environ_prepare(["manage.py", "cluster_info"], environ)
    assert environ == {"PERSONALIZATION_DATA_DIR": str(tmp_path / "cluster")}
