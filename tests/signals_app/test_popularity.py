from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from graph_app.models import ItemPopularity
from graph_app.state.popularity import popularity_refresh
from tests.factories import EventFactory, ItemFactory

pytestmark = pytest.mark.django_db


def test_recent_events_count_more_than_old_ones():
    now = timezone.now()
    ItemFactory(external_id="fresh")
    ItemFactory(external_id="stale")
    ItemFactory(external_id="forgotten", popularity=5)
    EventFactory(item_id="fresh", type="view", occurred_at=now - timedelta(hours=1))
    EventFactory(item_id="stale", type="view", occurred_at=now - timedelta(days=1))
    EventFactory(item_id="stale", type="hide", occurred_at=now)  # weight 0: ignored
    EventFactory(item_id="forgotten", type="purchase", occurred_at=now - timedelta(days=40))

    report = popularity_refresh()

    assert (report.items, report.top_item) == (2, "fresh")
    # A one-day half-life: an hour-old view is worth 2^(-1/24), a day-old one 1/2.
    stored = dict(ItemPopularity.objects.values_list("item_id", "score"))
    assert stored == {"fresh": pytest.approx(0.5 ** (1 / 24), rel=1e-3), "stale": pytest.approx(0.5, rel=1e-3)}


def test_a_refresh_leaves_the_catalog_rows_alone():
    """Popularity lives in its own table: a refresh writes no new version of an item's row (which would be an
    entry in the catalog's indexes each)."""
    from django.db import connection

    ItemFactory(external_id="hit", category="bags")
    EventFactory(item_id="hit", type="view", occurred_at=timezone.now() - timedelta(minutes=5))
    with connection.cursor() as cursor:
        cursor.execute("SELECT xmin::text FROM graph_app_item WHERE external_id = 'hit'")
        before = cursor.fetchone()[0]
        popularity_refresh()
        cursor.execute("SELECT xmin::text FROM graph_app_item WHERE external_id = 'hit'")
        after = cursor.fetchone()[0]
    assert after == before
    assert list(ItemPopularity.objects.values_list("item_id", "category")) == [("hit", "bags")]
