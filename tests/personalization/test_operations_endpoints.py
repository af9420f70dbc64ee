from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from personalization import views
from tests.conftest import dead_redis
from tests.embedded_test_env import PROJECT_ROOT

pytestmark = pytest.mark.django_db


def test_healthz_needs_no_key(anonymous_client):
    response = anonymous_client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_checks_postgres_and_redis(anonymous_client):
    response = anonymous_client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


def test_readyz_is_503_when_redis_is_down(anonymous_client, monkeypatch):
    monkeypatch.setattr(views, "get_redis", dead_redis)

    response = anonymous_client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"] == {"postgres": "ok", "redis": "down"}


def test_readyz_is_503_when_postgres_is_down():
    """A separate process pointed at a port where no PostgreSQL listens, through the real stack."""
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres",
        "REDIS_URL": settings.REDIS_URL,
    }
    script = (
        "from django.test import Client; r = Client().get('/readyz'); "
        "print(r.status_code, r.json()['checks']['postgres'], r.json()['checks']['redis'])"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "503 down ok", result.stderr


def test_metrics_with_an_unknown_key_while_postgres_is_down_is_503_in_json():
    env = {**os.environ, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/postgres", "REDIS_URL": settings.REDIS_URL}
    script = (
        "from django.test import Client; r = Client().get('/metrics', headers={'Authorization': 'Bearer unknown'}); "
        "print(r.status_code, r['Retry-After'], r.json()['code'])"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "503 1 service_unavailable", result.stderr


def test_metrics_need_a_key(anonymous_client, api_client):
    assert anonymous_client.get("/metrics").status_code == 401

    response = api_client.get("/metrics")

    assert response.status_code == 200
    assert b"django_http_requests_total_by_method_total" in response.content


def test_openapi_schema_and_docs_are_public_and_say_how_to_call_the_api(anonymous_client):
    schema = anonymous_client.get("/api/v1/schema/", {"format": "json"})
    docs = anonymous_client.get("/api/v1/docs/")

    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {
        "/api/v1/items/{item_id}",
        "/api/v1/items/batch",
        "/api/v1/items/{item_id}/similar",
        "/api/v1/events",
        "/api/v1/recommendations",
    } <= set(paths)
    assert set(paths["/api/v1/items/{item_id}"]) == {"get", "put", "delete"}
    # The calls it describes need a key: the bearer scheme (Swagger UI's Authorize), the default placements named.
    assert schema.json()["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert all(f"`{name}`" in schema.json()["info"]["description"] for name in ("home", "product_page", "cart"))
    assert anonymous_client.get("/api/v1/recommendations", {"user_id": "u1"}).status_code == 401
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content
    assert b"cdn." not in docs.content
    # Its setup script is served from the page's URL, not inline: the page's policy allows the site's scripts only.
    assert "script-src 'self' 'nonce-" in docs["Content-Security-Policy"]
    assert b"<script>" not in docs.content
    script = anonymous_client.get("/api/v1/docs/", {"script": ""})
    assert (script.status_code, script["Content-Type"]) == (200, "application/javascript")
    assert b"SwaggerUIBundle" in script.content


def test_vector_extension_and_ivfflat_index_exist():
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        assert cursor.fetchone()[0] >= "0.8"
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'item_embedding_ivfflat'")
        assert "ivfflat (embedding vector_cosine_ops)" in cursor.fetchone()[0]


def test_vector_searches_use_iterative_scans_and_the_measured_probes():
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('ivfflat.iterative_scan'), current_setting('ivfflat.probes')")
        assert cursor.fetchone() == ("relaxed_order", "60")
