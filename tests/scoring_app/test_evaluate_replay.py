"""`manage.py evaluate_replay`: reading and cleaning the Online Retail CSV, the temporal split, the offline
baselines and metrics, the command end to end on a tiny synthetic CSV in the same layout, and the clean counts of
the real file (skipped when ../shared/data is absent)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from operations.evaluation.replay import (
    RETAIL_COLUMNS,
    Baselines,
    Basket,
    ReplayConfig,
    catalog_rows,
    context_hit_rate,
    customer_metrics,
    event_rows,
    history_shift,
    item_category,
    list_overlap,
    purchases_read,
    replay_split,
)
from tests.scoring_app.scratch_checks import assert_live_stores_untouched

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
ONLINE_RETAIL = SHARED_DATA / "online-retail" / "online-retail.csv.gz"


def _write_csv(path: Path, rows: list[tuple[object, ...]]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RETAIL_COLUMNS)
        writer.writerows(rows)
    return path


def _row(invoice: str, item: str, quantity: int, at: str, price: float, customer: str) -> tuple[object, ...]:
    return (invoice, item, f"RED SPOTTY {item} MUG", quantity, at, price, customer, "United Kingdom")


def _synthetic_shop(folder: Path) -> tuple[Path, int]:
    """Two tastes: customers 12000-12013 buy items A01-A10, customers 12014-12027 items B01-B10, each two invoices
    of four items before 2011-09-01 and one of three after; plus rows the cleaning drops (a cancellation, a line
    without customer, a free line). Returns the file and its number of clean rows."""
    rng = random.Random(7)
    kinds = ("MUG", "BAG", "CANDLE")
    rows: list[tuple[object, ...]] = []
    invoice = 540000
    for number in range(28):
        customer = f"{12000 + number}.0"
        group = "A" if number < 14 else "B"
        for day in (f"2011-06-{1 + number % 28:02d} 10:00:00", f"2011-08-{1 + number % 28:02d} 11:30:00",
                    f"2011-09-{2 + number % 27:02d} 09:15:00"):  # fmt: skip
            invoice += 1
            size = 3 if day.startswith("2011-09") else 4
            for item_number in sorted(rng.sample(range(1, 11), size)):
                item = f"{group}{item_number:02d}"
                rows.append((str(invoice), item, f"{group} {item} {kinds[item_number % 3]}", 2, day, 1.25, customer,
                             "United Kingdom"))  # fmt: skip
    clean = len(rows)
    rows += [
        _row("C540999", "A01", -2, "2011-07-01 10:00:00", 1.25, "12000.0"),
        _row("540998", "A02", 5, "2011-07-01 10:00:00", 1.25, ""),
        _row("540997", "A03", 1, "2011-07-01 10:00:00", 0.0, "12001.0"),
    ]
    return _write_csv(folder / "online-retail.csv.gz", rows), clean


def test_reading_keeps_clean_purchases_in_time_order(tmp_path):
    path = _write_csv(
        tmp_path / "retail.csv.gz",
        [
            _row("536366", "22633", 6, "2010-12-01 08:28:00", 1.85, "17850.0"),
            ("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, "2010-12-01 08:26:00", 2.55, "17850.0", "UK"),
            _row("536365", "71053", 0, "2010-12-01 08:26:00", 3.39, "17850.0"),  # no quantity
            _row("536365", "84406B", 8, "2010-12-01 08:26:00", 2.75, "17850.0"),
            _row("C536379", "D", -1, "2010-12-01 09:41:00", 27.5, "14527.0"),  # a cancellation
            _row("536414", "22139", 56, "2010-12-01 11:52:00", 0.0, ""),  # no customer, no price
        ],
    )

    purchases = purchases_read(path=path)

    assert [(p.invoice, p.line, p.item_id, p.customer) for p in purchases] == [
        ("536365", 1, "85123A", "17850"),
        ("536365", 3, "84406B", "17850"),  # line numbers count every line of the invoice in the file
        ("536366", 1, "22633", "17850"),
    ]
    assert purchases[0].at == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    assert purchases[0].description == "WHITE HANGING HEART T-LIGHT HOLDER"


def test_reading_a_missing_file_names_it(tmp_path):
    from operations.evaluation.replay import ReplayError

    with pytest.raises(ReplayError, match="no such file"):
        purchases_read(path=tmp_path / "absent.csv.gz")


def test_command_fails_clearly_without_the_file(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        call_command("evaluate_replay", str(tmp_path / "absent.csv.gz"), stdout=io.StringIO(), stderr=io.StringIO())


def test_category_is_the_descriptions_last_word():
    assert item_category("WHITE HANGING HEART T-LIGHT HOLDER") == "holder"
    assert item_category("SET OF 3 CAKE TINS PANTRY DESIGN ") == "design"
    assert item_category("") == "other"


def test_split_counts_only_new_items_of_customers_with_history(tmp_path):
    path = _write_csv(
        tmp_path / "retail.csv.gz",
        [
            _row("1", "A", 1, "2011-08-01 10:00:00", 1.0, "1.0"),
            _row("1", "B", 1, "2011-08-01 10:00:00", 1.0, "1.0"),
            _row("2", "A", 1, "2011-08-02 10:00:00", 1.0, "2.0"),
            _row("3", "A", 1, "2011-09-02 10:00:00", 1.0, "1.0"),  # bought again: not relevant
            _row("3", "C", 1, "2011-09-02 10:00:00", 1.0, "1.0"),
            _row("4", "A", 1, "2011-09-03 10:00:00", 1.0, "2.0"),  # customer 2 only repeats: not a test customer
            _row("5", "B", 1, "2011-09-04 10:00:00", 1.0, "3.0"),  # no history
            _row("5", "A", 1, "2011-09-04 10:00:00", 1.0, "3.0"),
        ],
    )

    split = replay_split(purchases=purchases_read(path=path), config=ReplayConfig(cutoff=date(2011, 9, 1)))

    assert len(split.history) == 3
    assert len(split.future) == 5
    assert split.relevant == {"1": frozenset({"C"})}
    assert split.eligible_customers == 1
    # Baskets: post-cut invoices with two distinct catalog items (C is not in the catalog, only A and B were sold).
    assert split.eligible_baskets == 1
    assert split.baskets[0].invoice == "5"
    assert {split.baskets[0].context_item, *split.baskets[0].others} == {"A", "B"}


def test_split_samples_deterministically_by_seed(tmp_path):
    path, _ = _synthetic_shop(tmp_path)
    purchases = purchases_read(path=path)

    first = replay_split(purchases=purchases, config=ReplayConfig(customers=5, baskets=4, seed=3))
    again = replay_split(purchases=purchases, config=ReplayConfig(customers=5, baskets=4, seed=3))
    other_size = replay_split(purchases=purchases, config=ReplayConfig(customers=7, baskets=4, seed=3))
    everyone = replay_split(purchases=purchases, config=ReplayConfig(customers=0, baskets=0, seed=3))

    assert first.test_customers == again.test_customers and first.baskets == again.baskets
    assert len(first.test_customers) == 5
    assert other_size.baskets == first.baskets  # each sample has its own random stream
    assert len(everyone.test_customers) == everyone.eligible_customers
    assert len(everyone.baskets) == everyone.eligible_baskets == 28


def test_catalog_and_events_are_what_a_shop_would_send(tmp_path):
    path = _write_csv(
        tmp_path / "retail.csv.gz",
        [
            ("1", "X", "OLD NAME BAG", 2, "2011-08-01 10:00:00", 1.5, "7.0", "UK"),
            ("2", "X", "PINK BAG", 1, "2011-08-02 10:00:00", 1.505, "8.0", "UK"),
            ("3", "X", "PINK BAG", 1, "2011-08-03 10:00:00", 1.999, "8.0", "UK"),
        ],
    )
    history = purchases_read(path=path)
    now = datetime(2026, 12, 6, 12, 0, 30, tzinfo=UTC)

    rows = catalog_rows(history=history)
    shift = history_shift(history=history, now=now)
    events = event_rows(history=history, shift=shift)

    assert rows == [{"item_id": "X", "title": "PINK BAG", "category": "bag", "price": "2.00", "in_stock": True}]
    assert events[0] == {
        "event_id": "1-1",
        "type": "purchase",
        "user_id": "7",
        "item_id": "X",
        "timestamp": (datetime(2011, 8, 1, 10, tzinfo=UTC) + shift).isoformat(),
        "value": 3.0,
    }
    assert datetime.fromisoformat(events[-1]["timestamp"]) == now - timedelta(days=1)


def test_baselines_rank_by_buyers_and_by_cosine_neighbours():
    history = {"u1": {"a", "b"}, "u2": {"a", "b"}, "u3": {"a", "c"}, "u4": {"d"}}

    baselines = Baselines.fit(history_items=history, neighbours=1)

    assert baselines.popular == ["a", "b", "c", "d"]  # 3, 2, 1, 1 buyers; ties by item id
    assert baselines.popularity(exclude={"a"}, k=2) == ["b", "c"]
    # cos(a, b) = 2 / sqrt(3 * 2), cos(a, c) = 1 / sqrt(3): a's one neighbour is b, b's and c's is a.
    assert baselines.item_knn_context(item="a") == ["b"]
    assert baselines.item_knn_context(item="c") == ["a"]
    assert baselines.item_knn_context(item="d") == []  # no co-buyer: nothing rather than noise
    assert baselines.item_knn(owned={"b", "c"}) == ["a"]  # own items removed
    assert baselines.item_knn(owned={"a"}) == ["b"]


def test_metrics_hit_rate_and_ndcg():
    recommended = {"u1": ["x", "a", "y"], "u2": ["z"], "u3": []}
    relevant = {"u1": {"a", "b"}, "u2": {"q"}, "u3": {"a"}}

    metrics = customer_metrics(recommended=recommended, relevant=relevant)

    ideal = 1 / math.log(2) + 1 / math.log(3)
    assert metrics["HR@10"] == pytest.approx(round(1 / 3, 4))
    assert metrics["nDCG@10"] == pytest.approx(round((1 / math.log(3)) / ideal / 3, 4))
    baskets = [Basket("1", "c", "a", frozenset({"b"})), Basket("2", "c", "a", frozenset({"q"}))]
    assert context_hit_rate(recommended=[["a", "b"], ["a"]], baskets=baskets) == 0.5
    assert list_overlap(["a", "b"], ["b", "c", "d"]) == pytest.approx(1 / 3)
    assert list_overlap([], []) == 1.0


@pytest.mark.django_db(transaction=True)
def test_command_runs_end_to_end_in_scratch_stores(tmp_path, clean_redis):
    path, clean = _synthetic_shop(tmp_path)
    stdout, stderr = io.StringIO(), io.StringIO()
    live_database = connection.settings_dict["NAME"]
    listener = clean_redis.pubsub()
    listener.psubscribe(f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__*")

    call_command("evaluate_replay", str(path), "--customers", "12", "--baskets", "8", stdout=stdout, stderr=stderr)

    document = json.loads(stdout.getvalue())
    config = document["config"]
    assert (config["purchases"], config["history_rows"], config["future_rows"]) == (clean, 28 * 8, 28 * 3)
    assert (config["test_customers"], config["baskets"], config["catalog_items"]) == (12, 8, 20)
    assert config["cutoff"] == "2011-09-01" and config["seed"] == 42
    # Every history line went through the events API and the drain into the log.
    assert document["ingest"]["events"]["accepted"] == 28 * 8
    assert document["ingest"]["drain"]["stored"] == 28 * 8
    assert document["ingest"]["catalog"] == {"created": 20, "updated": 0}
    for table in ("results", "context"):
        assert set(document[table]) == {"served", "popularity", "item_knn"}
        for row in document[table].values():
            assert 0.0 <= row["HR@10"] <= 1.0
    assert sum(document["paths"]["home"].values()) == 12
    assert sum(document["paths"]["product_page"].values()) == 8
    assert not any(path.startswith("http_") for paths in document["paths"].values() for path in paths)
    assert document["stability"]["customers"] == 12
    # Two tastes that never mix: the item neighbours find the basket's other items, popularity mixes the tastes.
    assert document["context"]["item_knn"]["HR@10"] == 1.0
    assert document["results"]["item_knn"]["nDCG@10"] >= document["results"]["popularity"]["nDCG@10"]
    assert document["training"][0]["task"] == "signals.popularity_refresh"
    assert {"read", "scratch", "catalog", "events", "drain", "training", "serve", "context"} <= set(
        document["seconds_by_phase"]
    )
    assert "drain:" in stderr.getvalue()
    assert_live_stores_untouched(live_database=live_database, clean_redis=clean_redis, listener=listener)


def test_command_refuses_the_live_redis_database(tmp_path):
    path, _ = _synthetic_shop(tmp_path)
    live = int(settings.REDIS_URL.rsplit("/", 1)[1] or 0)

    with pytest.raises(CommandError, match="live"):
        call_command("evaluate_replay", str(path), "--redis-db", str(live), stdout=io.StringIO(), stderr=io.StringIO())


@pytest.mark.skipif(not ONLINE_RETAIL.exists(), reason="Online Retail is not in ../shared/data")
def test_clean_counts_of_the_real_file():
    purchases = purchases_read(path=ONLINE_RETAIL)

    assert len(purchases) == 397_884
    assert len({purchase.customer for purchase in purchases}) == 4_338
    assert len({purchase.item_id for purchase in purchases}) == 3_665
    assert len({(purchase.customer, purchase.item_id) for purchase in purchases}) == 266_792
