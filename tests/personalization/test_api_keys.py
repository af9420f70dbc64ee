from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.test import APIClient

from personalization.models import ApiKey
from personalization.services import api_key_revoke

pytestmark = pytest.mark.django_db


def test_create_api_key_command_prints_the_key_last_and_stores_only_its_hash(capsys):
    call_command("create_api_key", "web shop")

    raw_key = capsys.readouterr().out.strip().splitlines()[-1]
    stored = ApiKey.objects.get(name="web shop")
    assert raw_key.startswith(f"pk_{stored.prefix}_")
    assert raw_key not in (stored.hashed_key, stored.prefix)
    assert not ApiKey.objects.filter(hashed_key=raw_key).exists()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert client.get("/api/v1/recommendations", {"user_id": "u"}).status_code == 200


def test_two_keys_differ():
    call_command("create_api_key", "a")
    call_command("create_api_key", "b")
    assert ApiKey.objects.values("hashed_key").distinct().count() == 2


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer", "Token abc", "Basic dXNlcjpwYXNz"])
def test_wrong_or_malformed_credentials_are_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/api/v1/recommendations", {"user_id": "u"})

    assert response.status_code == 401
    assert set(response.json()) == {"detail", "code", "errors"}


def test_revoked_key_is_refused(api_client, raw_api_key):
    assert api_client.get("/api/v1/recommendations", {"user_id": "u"}).status_code == 200

    api_key_revoke(api_key=ApiKey.objects.get())

    assert api_client.get("/api/v1/recommendations", {"user_id": "u"}).status_code == 401


def test_staff_session_may_call_the_api_but_other_users_may_not():
    staff = get_user_model().objects.create_user("staff", password="x", is_staff=True)
    shopper = get_user_model().objects.create_user("plain", password="x")
    client = APIClient()

    client.force_login(staff)
    assert client.get("/api/v1/recommendations", {"user_id": "u"}).status_code == 200
    client.force_login(shopper)
    assert client.get("/api/v1/recommendations", {"user_id": "u"}).status_code == 403


def test_admin_creates_key_and_shows_it_once(admin_client):
    response = admin_client.post("/admin/personalization/apikey/add/", {"name": "from admin"}, follow=True)

    assert response.status_code == 200
    messages = [str(message) for message in response.context["messages"]]
    raw_key = next(message.split(": ", 1)[1] for message in messages if "shown only now" in message)
    stored = ApiKey.objects.get(name="from admin")
    assert raw_key.startswith(f"pk_{stored.prefix}_")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert client.get("/api/v1/recommendations", {"user_id": "u"}).status_code == 200


def test_admin_revoke_action(admin_client, raw_api_key):
    key = ApiKey.objects.get()

    admin_client.post(
        "/admin/personalization/apikey/", {"action": "revoke_selected", "_selected_action": [key.pk]}, follow=True
    )

    key.refresh_from_db()
    assert key.revoked_at is not None
