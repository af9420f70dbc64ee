from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from graph_app.features.materialize import SLICE, features_materialize, slice_reactions
from graph_app.models import FeatureRow, MaterializationCursor
from graph_app.state.models import Impression
from tests.factories import EventFactory

pytestmark = pytest.mark.django_db


def serve(request_id: str, served_at: datetime, items: int = 3) -> None:
    for slot in range(items):
        Impression.objects.create(
            request_id=request_id, user_key="u1", placement="home", item_id=f"{request_id}-{slot}", slot=slot,
            served_at=served_at,
        )  # fmt: skip


def react(request_id: str, slot: int, at: datetime, type_name: str = "click") -> None:
    EventFactory(
        type=type_name, request_id=request_id, item_id=f"{request_id}-{slot}", occurred_at=at,
        attributed_placement="home", attributed_slot=slot,
    )  # fmt: skip


def materialized() -> dict[str, list[tuple[str, bool, bool]]]:
    rows: dict[str, list[tuple[str, bool, bool]]] = {}
    for row in FeatureRow.objects.order_by("request_id", "slot"):
        rows.setdefault(row.request_id, []).append((row.item_id, row.clicked, row.purchased))
    return rows


def test_every_item_of_a_slate_with_a_reaction_in_its_label_window_becomes_a_row_and_only_those():
    now = timezone.now()
    served = now - timedelta(hours=2)
    serve("reacted", served)
    react("reacted", 1, served + timedelta(minutes=5))
    react("reacted", 2, served + timedelta(minutes=20), "purchase")
    serve("ignored", served)
    serve("reacted-too-late", served)
    react("reacted-too-late", 0, served + timedelta(minutes=45))
    serve("window-still-open", now - timedelta(minutes=10))
    react("window-still-open", 0, now - timedelta(minutes=9))

    report = features_materialize(now=now)

    assert materialized() == {
        "reacted": [("reacted-0", False, False), ("reacted-1", True, False), ("reacted-2", True, True)],
    }
    assert (report.rows, report.clicked, report.purchased) == (3, 2, 1)
    # The cursor stops where the label window is still open; the next run takes that slate when it has closed.
    assert MaterializationCursor.objects.get().served_before == now - timedelta(minutes=30)
    assert features_materialize(now=now + timedelta(minutes=30)).rows == 3
    assert set(materialized()) == {"reacted", "window-still-open"}


def test_each_run_goes_on_from_the_cursor_and_a_materialized_slate_is_not_made_again():
    now = timezone.now()
    first = now - timedelta(hours=3)
    for slice_number in range(4):
        served = first + slice_number * SLICE
        serve(f"s{slice_number}", served, items=2)
        react(f"s{slice_number}", 0, served + timedelta(minutes=1))

    one = features_materialize(now=now, time_budget_seconds=0)  # one slice, then out of time
    two = features_materialize(now=now, time_budget_seconds=0)
    rest = features_materialize(now=now)

    assert (one.slices, one.rows, two.slices, two.rows) == (1, 2, 1, 2)
    assert rest.rows == 4
    assert set(materialized()) == {"s0", "s1", "s2", "s3"}
    # Read again from the start (the cursor moved back by hand), materialized slates are not made again.
    MaterializationCursor.objects.update(served_before=first)
    assert features_materialize(now=now).rows == 0
    assert FeatureRow.objects.count() == 8


def test_training_rows_older_than_the_impression_log_keeps_are_pruned(settings):
    settings.IMPRESSION_LOG_RETENTION_DAYS = 30
    now = timezone.now()
    for request_id, days in (("old", 31), ("kept", 29)):
        FeatureRow.objects.create(
            request_id=request_id, slot=0, user_key="u1", item_id="sku-1", placement="home",
            served_at=now - timedelta(days=days), features=[], feature_names=[],
        )  # fmt: skip

    report = features_materialize(now=now)

    assert report.pruned == 1
    assert list(FeatureRow.objects.values_list("request_id", flat=True)) == ["kept"]


def test_a_slices_reactions_are_read_from_the_index_of_attributed_events():
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = slice_reactions(now - SLICE, now, timedelta(minutes=30)).explain()

    # Each monthly partition's copy of event_attributed_time is named after its columns.
    assert "Index Only Scan" in plan and "occurred_at_type_request_id_attri_idx" in plan, plan
    assert "Seq Scan" not in plan, plan
