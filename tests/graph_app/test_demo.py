from __future__ import annotations

import csv
import gzip
from datetime import timedelta

import pytest
from django.utils import timezone

from graph_app.models import Entity, Item, Shopper
from graph_app.state.models import Event
from operations.demo import DEMO_SAMPLE, demo_data_load

pytestmark = pytest.mark.django_db
ROWS = 400


@pytest.fixture
def small_sample(tmp_path):
    with gzip.open(DEMO_SAMPLE, "rt", encoding="utf-8", newline="") as source:
        lines = source.readlines()[: ROWS + 1]
    path = tmp_path / "sample.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as target:
        target.writelines(lines)
    rows = [row for row in csv.DictReader(lines) if row["StockCode"][:1].isdigit()]
    assert len(rows) < ROWS  # the sample's first lines include fees (POST), which are not products
    return path, rows


def test_demo_sample_ships_with_its_attribution():
    attribution = (DEMO_SAMPLE.parent / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in attribution
    assert "10.1057/dbm.2012.17" in attribution


def test_demo_load_creates_catalog_users_and_events_once(small_sample):
    path, rows = small_sample

    report = demo_data_load(sample=path)

    codes = {row["StockCode"] for row in rows}
    assert (report.items, report.users) == (len(codes), len({row["CustomerID"] for row in rows}))
    assert report.events_accepted + report.events_duplicate == len(rows)
    assert not Item.objects.filter(external_id="POST").exists()
    assert Event.objects.count() == report.events_accepted
    assert Item.objects.count() == len(codes)
    assert Shopper.objects.filter(traits__country="United Kingdom").exists()
    assert Entity.objects.filter(kind="category").exists()
    assert Item.objects.filter(embedding__isnull=True).count() == 0
    newest = Event.objects.order_by("-occurred_at").first().occurred_at
    assert timezone.now() - timedelta(hours=2) < newest < timezone.now()

    again = demo_data_load(sample=path)

    assert again.events_accepted == 0
    assert Event.objects.count() == report.events_accepted
