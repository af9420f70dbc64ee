"""Settings from the environment: connection URLs read by dj-database-url, and a production configuration that
passes Django's deployment checks with the variables the README documents."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

import pytest

from config.settings import _database_from_url
from tests.embedded_test_env import PROJECT_ROOT


def test_a_url_keeps_every_option_decoded():
    config = _database_from_url(
        "postgresql://app%40shop:p%40ss%2Fw%3Ard@db.internal:6543/personalization"
        "?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem&application_name=web&connect_timeout=10"
    )

    assert (config["USER"], config["PASSWORD"]) == ("app@shop", "p@ss/w:rd")
    assert (config["HOST"], int(config["PORT"]), config["NAME"]) == ("db.internal", 6543, "personalization")
    assert config["ENGINE"] == "django_prometheus.db.backends.postgresql"
    assert (config["CONN_MAX_AGE"], config["CONN_HEALTH_CHECKS"]) == (60, True)
    options = config["OPTIONS"]
    assert {key: options[key] for key in ("sslmode", "sslrootcert", "application_name", "connect_timeout")} == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/db-ca.pem",
        "application_name": "web",
        "connect_timeout": 10,
    }
    assert options["options"] == "-c ivfflat.probes=60 -c ivfflat.iterative_scan=relaxed_order"


def test_the_embedded_servers_socket_is_the_host_and_defaults_fill_the_rest(monkeypatch):
    monkeypatch.setenv("DATABASE_CONN_MAX_AGE", "0")

    config = _database_from_url("postgresql://postgres:@/postgres?host=/data/pg&options=-c%20statement_timeout%3D5000")

    assert (config["HOST"], config["PORT"], config["PASSWORD"]) == ("/data/pg", "", "")
    assert "host" not in config["OPTIONS"]
    assert config["OPTIONS"]["connect_timeout"] == 3
    assert config["OPTIONS"]["options"] == (
        "-c statement_timeout=5000 -c ivfflat.probes=60 -c ivfflat.iterative_scan=relaxed_order"
    )
    assert config["CONN_MAX_AGE"] == 0
    assert _database_from_url("postgresql://app@db.internal")["NAME"] == "postgres"


def readme_production_variables() -> dict[str, str]:
    """The `export NAME=value` lines of the README's "Production settings" block; the secret key is generated, as
    the README's command does."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = re.search(r"## Production settings\n.*?```sh\n(.*?)```", readme, re.S)
    assert block, "README.md has no Production settings block"
    variables = {}
    for name, value in re.findall(r"^export (\w+)=(\S+)", block.group(1), re.M):
        variables[name] = value.strip("'\"")
    variables["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    return variables


def deploy_check(variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only the machine's basics: no development setting of this process leaks into the production one.
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_ROOT, env={**env, **variables}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.integration
def test_the_readmes_production_variables_pass_the_deployment_checks():
    variables = readme_production_variables()
    assert {"DJANGO_ENV", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL", "DJANGO_SECURE_HSTS_SECONDS"} <= set(
        variables
    )

    passed = deploy_check(variables)
    without_hsts = deploy_check({k: v for k, v in variables.items() if not k.startswith("DJANGO_SECURE_HSTS")})

    assert passed.returncode == 0, passed.stderr
    assert "System check identified no issues" in passed.stdout
    assert without_hsts.returncode == 1
    assert "security.W004" in without_hsts.stderr  # the check does fail on a missing setting


@pytest.mark.integration
def test_production_refuses_to_start_without_a_secret_key():
    variables = readme_production_variables()
    del variables["DJANGO_SECRET_KEY"]

    refused = deploy_check(variables)

    assert refused.returncode == 1
    assert "DJANGO_SECRET_KEY must be set when DJANGO_ENV=production" in refused.stderr


def settings_value(setting: str = "DEBUG", **variables: str) -> subprocess.CompletedProcess[str]:
    """config.settings imported alone (no server is contacted), printing a setting (DEBUG)."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    urls = {"DATABASE_URL": "postgresql://app@db.invalid/none", "REDIS_URL": "redis://redis.invalid:1/0"}
    return subprocess.run(
        [sys.executable, "-c", f"import config.settings as s; print(s.{setting})"],
        cwd=PROJECT_ROOT, env={**env, **urls, **variables}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(("variables", "debug"), [({"DEBUG": "0"}, "False"), ({"DEBUG": "1"}, "True"), ({}, "True")])
def test_debug_is_read_from_debug(variables, debug):
    result = settings_value(**variables)

    assert result.stdout.strip() == debug, result.stderr
    assert "deprecated" not in result.stderr


def test_djangos_old_name_still_works_with_a_warning_and_a_disagreement_is_refused():
    old_name = settings_value(DJANGO_DEBUG="0")
    disagreeing = settings_value(DJANGO_DEBUG="1", DEBUG="0")

    assert old_name.stdout.strip() == "False"
    assert "FutureWarning: DJANGO_DEBUG is deprecated: set DEBUG instead." in old_name.stderr
    assert disagreeing.returncode == 1
    assert "DEBUG and DJANGO_DEBUG disagree" in disagreeing.stderr


def test_the_hot_paths_redis_timeout_is_50_ms_unless_loosened():
    """The suite runs with a loosened timeout (tests/embedded_test_env.py); a deployment gets 50 ms."""
    default = settings_value("REDIS_HOT_PATH_TIMEOUT_SECONDS")

    assert default.stdout.strip() == "0.05", default.stderr
    assert os.environ["REDIS_HOT_PATH_TIMEOUT_SECONDS"] == "2"


def test_a_redis_key_prefix_that_would_move_keys_or_break_scans_is_refused():
    refused = settings_value("REDIS_KEY_PREFIX", REDIS_KEY_PREFIX="shop{1}")
    accepted = settings_value("CACHES['default']['KEY_PREFIX']", REDIS_KEY_PREFIX="shop-1:")

    assert refused.returncode == 1
    assert "REDIS_KEY_PREFIX may hold letters, digits and .:_- only, not 'shop{1}'" in refused.stderr
    assert accepted.stdout.strip() == "shop-1:cache", accepted.stderr
