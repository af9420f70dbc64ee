"""The model registry's move from Score to Graph on a database that has versions: state only, so the rows stay, and
the content type follows, so the console's permissions on model versions stay granted."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from graph_app.model_registry.models import ModelVersion

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("graph_app", "0009_catalog_fewer_indexes"), ("scoring_app", "0002_model_registry")]
AFTER = [("graph_app", "0010_modelversion_from_scoring"), ("scoring_app", "0003_modelversion_to_graph")]


def _migrate(targets: list[tuple[str, str]]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    ContentType.objects.clear_cache()


def test_the_move_keeps_the_rows_and_the_granted_permissions():
    _migrate(BEFORE)
    try:
        in_score = ContentType.objects.get(app_label="scoring_app", model="modelversion")
        view = Permission.objects.get(content_type=in_score, codename="view_modelversion")
        group = Group.objects.create(name="Readers")
        group.permissions.add(view)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO scoring_app_modelversion (kind, version, state, canary_percent, metrics, feature_names, "
                "artifact, replaced_version, created_at) "
                "VALUES ('ranker', 'ranker-1', 'active', 0, '{}', '[]', '\\x00', '', now())"
            )
    finally:
        _migrate(AFTER)

    moved = ContentType.objects.get(app_label="graph_app", model="modelversion")
    assert moved.pk == in_score.pk
    assert not ContentType.objects.filter(app_label="scoring_app", model="modelversion").exists()
    assert list(Group.objects.get(name="Readers").permissions.values_list("pk", flat=True)) == [view.pk]
    assert ModelVersion.objects.get(version="ranker-1").state == "active"
