"""A large catalog's vectors are written with the items' vector index away (`_vectors_bulk_write`): the same rows
as the row-by-row write, the index built again after."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from graph_app import training
from graph_app.item_vector_index import INDEX_NAME
from graph_app.model_registry.models import ModelVersion
from graph_app.models import Item, Shopper
from graph_app.training import embeddings_train
from tests.graph_app.tastes import two_tastes_create

# Outside a transaction, as training runs: the index is dropped and built CONCURRENTLY.
pytestmark = pytest.mark.django_db(transaction=True)


def _valid_index() -> bool | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid WHERE c.relname = %s",
            [INDEX_NAME],
        )
        row = cursor.fetchone()
    return None if row is None else row[0]


def _vectors(model) -> dict[str, np.ndarray]:
    return {
        external_id: np.asarray(vector) for external_id, vector in model.objects.values_list("external_id", "embedding")
    }


def test_a_large_catalog_gets_the_same_vectors_and_its_index_back(monkeypatch, clean_redis):
    two_tastes_create()
    row_by_row = embeddings_train()
    items, users = _vectors(Item), _vectors(Shopper)

    Item.objects.update(embedding=None, embedding_source="")
    Shopper.objects.update(embedding=None)

    monkeypatch.setattr(training, "VECTORS_BULK_MIN_ROWS", 1)
    bulk = embeddings_train()

    assert ModelVersion.objects.get(version=bulk.model_version).state == "active"
    assert bulk.model_version != row_by_row.model_version
    for before, after in ((items, _vectors(Item)), (users, _vectors(Shopper))):
        assert before.keys() == after.keys()
        assert all(np.allclose(before[key], after[key], atol=1e-6) for key in before)
    assert set(Item.objects.values_list("embedding_source", flat=True)) == {"collaborative"}
    assert _valid_index() is True
