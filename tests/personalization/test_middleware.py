"""Request ids: each request's log lines carry one, its response returns it, and a line is printed once."""

from __future__ import annotations

import logging

import pytest

from tests.log_capture import json_log_lines  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def test_a_requests_lines_carry_the_id_it_came_with_and_the_response_returns_it(api_client, json_log_lines):  # noqa: F811
    response = api_client.get("/api/v1/items/missing", HTTP_X_REQUEST_ID="storefront-7f3a.42")

    assert response.status_code == 404
    assert response["X-Request-ID"] == "storefront-7f3a.42"
    assert json_log_lines() == [
        {
            "event": "Not Found: /api/v1/items/missing",
            "level": "warning",
            "logger": "django.request",
            "request_id": "storefront-7f3a.42",
            "status_code": 404,
            "request": "GET /api/v1/items/missing",
            "timestamp": json_log_lines()[0]["timestamp"],
        }
    ]


@pytest.mark.parametrize("incoming", [None, "", "not an id", "x" * 129])
def test_a_request_without_a_well_formed_id_gets_a_new_one(api_client, json_log_lines, incoming):  # noqa: F811
    headers = {} if incoming is None else {"HTTP_X_REQUEST_ID": incoming}

    first = api_client.get("/api/v1/items/missing", **headers)
    second = api_client.get("/api/v1/items/missing", **headers)

    ids = [first["X-Request-ID"], second["X-Request-ID"]]
    assert ids[0] != ids[1] and incoming not in ids
    assert all(len(request_id) == 32 for request_id in ids)
    assert [line["request_id"] for line in json_log_lines()] == ids


def test_successful_responses_return_their_id_too(api_client):
    response = api_client.get("/healthz")

    assert response.status_code == 200
    assert len(response["X-Request-ID"]) == 32


def test_djangos_request_lines_reach_one_handler():
    """Django's default logging gives its `django` logger a console handler of its own: with the root's, every 4xx
    and 5xx was printed twice."""
    handlers = []
    logger: logging.Logger | None = logging.getLogger("django.request")
    while logger is not None:
        handlers += [handler for handler in logger.handlers if handler.name]  # pytest's capture handlers have none
        logger = logger.parent if logger.propagate else None

    assert [handler.name for handler in handlers] == ["console"]


def csp_directives(response) -> dict[str, str]:
    return {
        part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
        for part in response["Content-Security-Policy"].split(";")
    }


@pytest.mark.django_db
def test_console_pages_carry_a_policy_whose_nonce_is_their_inline_scripts(admin_client, settings):
    settings.WEBSOCKET_PUBLIC_URL = "wss://ws.shop.example:8443"

    preview = admin_client.get("/admin/console/preview/")
    index = admin_client.get("/admin/")

    directives = csp_directives(preview)
    nonce = directives["script-src"].split("'nonce-")[1].rstrip("'")
    assert preview.status_code == index.status_code == 200
    assert f'<script nonce="{nonce}">' in preview.content.decode()
    assert directives["default-src"] == "'self'"
    assert directives["connect-src"] == "'self' wss://ws.shop.example:8443"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in directives["script-src"]
    assert csp_directives(index)["script-src"] != directives["script-src"]  # a nonce per response


@pytest.mark.django_db
def test_the_demo_page_carries_the_policy_and_the_api_does_not_need_one(admin_client):
    demo = admin_client.get("/demo/")
    api = admin_client.get("/api/v1/items/missing")

    assert demo.status_code == 200
    nonce = csp_directives(demo)["script-src"].split("'nonce-")[1].rstrip("'")
    assert f'<script nonce="{nonce}">' in demo.content.decode()
    assert "Content-Security-Policy" not in api


@pytest.mark.django_db
def test_hsts_is_sent_on_the_console_with_the_production_settings(client, settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = settings.SECURE_HSTS_PRELOAD = True

    response = client.get("/admin/login/", secure=True)

    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert "Content-Security-Policy" in response
