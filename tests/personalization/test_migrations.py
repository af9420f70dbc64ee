from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db.migrations.loader import MigrationLoader

pytestmark = pytest.mark.django_db

OUR_APPS = {"personalization", "signals_app", "graph_app", "scoring_app", "surface_app", "rules_admin"}


def test_the_models_and_the_migrations_agree():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # exits non-zero on a missing migration


def test_no_migration_of_ours_depends_on_whatever_is_latest():
    """A "__latest__" dependency resolves when migrate runs: a later migration of the app it names would make an applied
    migration depend on an unapplied one, and migrate refuse to run on every existing database."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    floating = [
        (key, dependency)
        for key, migration in loader.disk_migrations.items()
        if key[0] in OUR_APPS
        for dependency in migration.dependencies
        if dependency[1] == "__latest__"
    ]

    assert floating == []


def test_a_new_item_updates_no_index_nothing_reads():
    """Every index is one more insert per new item (or link): no LIKE-prefix twin of a text column, no item_id index
    beside (item, entity)'s."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename IN ('graph_app_item', 'graph_app_entity', 'graph_app_itementity')"
        )
        indexes = cursor.fetchall()

    assert [row for row in indexes if "varchar_pattern_ops" in row[1]] == []
    link_indexes = [definition.split(" USING ")[1] for table, definition in indexes if table == "graph_app_itementity"]
    assert "btree (item_id)" not in link_indexes and "btree (item_id, entity_id)" in link_indexes
