"""Errors the views do not raise themselves still answer in the API's error shape."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_a_body_that_is_not_json_names_the_body(api_client):
    response = api_client.put("/api/v1/users/u-1", b"\x00", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert list(response.json()["errors"]) == ["body"]


@pytest.mark.parametrize("url", ["/api/v1/items/shirts%2Fblue", "/api/v1/items/shirts%2Fblue/similar", "/api/v1/nope"])
def test_an_api_url_no_route_matches_is_a_json_404(api_client, url):
    response = api_client.get(url)

    assert (response.status_code, response["Content-Type"]) == (404, "application/json")
    assert response.json() == {
        "detail": "No API endpoint matches this URL.",
        "code": "not_found",
        "errors": {},
        "message": "No API endpoint matches this URL.",
    }


def test_other_unknown_urls_keep_django_s_page(anonymous_client):
    response = anonymous_client.get("/no-such-page")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
