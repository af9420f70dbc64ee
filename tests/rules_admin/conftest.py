"""Console users of each role, logged in with the test client."""

from __future__ import annotations

import pytest
from django.test import Client

from rules_admin.roles import ADMINISTRATOR, MERCHANDISER
from tests.rules_admin.console_users import console_user


@pytest.fixture
def merchandiser(django_user_model):
    return console_user(django_user_model, "merch", MERCHANDISER)


@pytest.fixture
def administrator(django_user_model):
    return console_user(django_user_model, "boss", ADMINISTRATOR)


@pytest.fixture
def merchandiser_client(merchandiser) -> Client:
    client = Client()
    client.force_login(merchandiser)
    return client


@pytest.fixture
def administrator_client(administrator) -> Client:
    client = Client()
    client.force_login(administrator)
    return client
