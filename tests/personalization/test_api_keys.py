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
    assert set(response.json()) == {"detail", "code", "errors", "message"}


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
    response = admin_client.post(
        "/admin/personalization/apikey/add/", {"name": "from admin", "scope": "server"}, follow=True
    )

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


def test_create_api_key_command_sets_scope_and_rate(capsys):
    call_command("create_api_key", "web page", "--scope", "public", "--rate", "50")
    call_command("create_api_key", "back end")

    assert ApiKey.objects.get(name="web page").scope == "public"
    assert ApiKey.objects.get(name="web page").rate_limit_per_second == 50
    assert (ApiKey.objects.get(name="back end").scope, ApiKey.objects.get(name="back end").rate_limit_per_second) == (
        "server",
        None,
    )


def test_create_api_key_command_refuses_a_bound_key_that_is_not_public(settings):
    from django.core.management.base import CommandError

    settings.SHOPPER_TOKEN_SECRET = "secret"
    with pytest.raises(CommandError, match="public"):
        call_command("create_api_key", "back end", "--scope", "server", "--shopper-token")
    assert not ApiKey.objects.exists()


def test_admin_changes_scope_and_rate_and_they_apply(admin_client, raw_api_key):
    key = ApiKey.objects.get()
    change = {"name": key.name, "scope": "public", "rate_limit_per_second": "1"}

    response = admin_client.post(f"/admin/personalization/apikey/{key.pk}/change/", change, follow=True)

    assert response.status_code == 200
    key.refresh_from_db()
    assert (key.scope, key.rate_limit_per_second) == ("public", 1)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_api_key}")
    assert client.get("/api/v1/items/x").status_code == 403  # public now
    assert [client.get("/api/v1/items/x/similar").status_code for _ in range(2)] == [404, 429]


def test_admin_refuses_binding_a_server_key_with_the_fields_error(admin_client, settings):
    settings.SHOPPER_TOKEN_SECRET = "secret"
    form = {"name": "bound", "scope": "server", "requires_shopper_token": "on"}

    response = admin_client.post("/admin/personalization/apikey/add/", form)

    assert response.status_code == 200  # the form again, with its error
    assert "Only a public key is bound to shoppers." in response.content.decode()
    assert not ApiKey.objects.exists()


def test_keys_made_before_scopes_become_admin_keys_so_nothing_that_worked_stops():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("personalization", "0001_initial")])
    old_state = executor.loader.project_state([("personalization", "0001_initial")])
    OldApiKey = old_state.apps.get_model("personalization", "ApiKey")
    OldApiKey.objects.create(name="from before", prefix="abcd1234", hashed_key="0" * 64)

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes("personalization"))

    old = ApiKey.objects.get(name="from before")
    assert (old.scope, old.rate_limit_per_second, old.requires_shopper_token) == ("admin", None, False)
    assert ApiKey.objects.create(name="new", prefix="efgh5678", hashed_key="1" * 64).scope == "server"
