from __future__ import annotations

import time

import pytest

from graph_app.state.impression_log import impressions_store
from graph_app.state.models import Impression

pytestmark = pytest.mark.django_db


def record(request_id: str, **extra: object) -> dict[str, object]:
    return {
        "request_id": request_id, "user_key": "u1", "placement": "home", "model_version": "ranker-1",
        "served_at": time.time(), "variant": "control", "path": "ranker",
        "items": [{"item_id": "sku-1", "slot": 0, "score": 0.5, "source": "popular"},
                  {"item_id": "sku-2", "slot": 1, "score": 0.25, "source": "popular"}],
        **extra,
    }  # fmt: skip


def test_each_row_keeps_the_experiment_variant_build_time_and_degradation_of_its_slate():
    impressions_store(
        impressions=[
            record("r1", experiment={"id": 7, "variant": "holdout"}, serving_ms=12.5, degraded=True),
            record("r2"),
        ]
    )

    rows = Impression.objects.order_by("request_id", "slot").values_list(
        "request_id", "slot", "experiment_id", "experiment_variant", "serving_ms", "degraded"
    )
    assert list(rows) == [
        ("r1", 0, 7, "holdout", 12.5, True),
        ("r1", 1, 7, "holdout", 12.5, True),
        ("r2", 0, None, "", None, False),
        ("r2", 1, None, "", None, False),
    ]
