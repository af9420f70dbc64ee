from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django_celery_beat.models import PeriodicTask

from graph_app.model_registry.models import ModelVersion
from operations.bootstrap import ADMIN_USERNAME, platform_bootstrap
from personalization.services import api_key_verify
from tests.factories import EventFactory, ItemFactory

pytestmark = pytest.mark.django_db


def test_bootstrap_trains_installs_schedules_and_makes_credentials(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    ItemFactory(external_id="a")
    EventFactory(item_id="a", type="purchase")

    report = platform_bootstrap(with_demo_data=False)

    assert report.model_trained is True
    from surface_app.models import FrequencyCap, Placement

    assert set(Placement.objects.values_list("name", flat=True)) == {"home", "product_page", "cart"}
    assert FrequencyCap.objects.get().scope == "cooldown"
    assert ModelVersion.objects.filter(state="active").count() == 1
    assert set(PeriodicTask.objects.values_list("task", flat=True)) >= {
        "signals.popularity_refresh",
        "graph.embeddings_train",
    }
    admin = get_user_model().objects.get(username=ADMIN_USERNAME)
    assert admin.is_superuser and admin.check_password(report.admin_password)
    assert len(report.admin_password) >= 16
    assert api_key_verify(raw_key=report.demo_api_key) is not None


def test_bootstrap_is_idempotent_and_keeps_staff_edits(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    first = platform_bootstrap(with_demo_data=False)
    PeriodicTask.objects.filter(task="graph.embeddings_train").update(enabled=False)

    second = platform_bootstrap(with_demo_data=False)

    assert (second.admin_password, second.demo_api_key) == (first.admin_password, first.demo_api_key)
    assert PeriodicTask.objects.get(task="graph.embeddings_train").enabled is False
    assert PeriodicTask.objects.filter(task="graph.embeddings_train").count() == 1


def test_demo_page_is_for_staff(client, admin_client, settings):
    assert client.get("/demo/").status_code == 302
    response = admin_client.get("/demo/")
    assert response.status_code == 200
    assert b"/ws/v1/recommendations/" in response.content
    assert settings.WEBSOCKET_PUBLIC_URL.encode() in response.content
    assert b"http://" not in response.content.replace(b"http://127.0.0.1", b"")
