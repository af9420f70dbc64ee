from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from graph_app.models import Shopper
from graph_app.state.log import (
    IMPRESSION_DAYS_AHEAD,
    IMPRESSION_LOG,
    event_log_append,
    event_log_partitions,
    event_log_partitions_create,
    event_log_partitions_ensure,
    impression_log_maintain,
    month_add,
    month_start,
    partition_name,
)
from graph_app.state.models import Event, EventId, Impression
from graph_app.state.records import Attribution, EventInput, EventRecord
from operations.bootstrap import DEFAULT_SCHEDULES
from signals_app.tasks import event_log_partitions_ensure_task, impression_log_maintain_task
from tests.factories import EventFactory

pytestmark = pytest.mark.django_db

RECEIVED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
STORED_FIELDS = ("event_id", "type", "user_id", "session_id", "item_id", "occurred_at")


def record(
    event_id: str, *, occurred_at: datetime | None = None, attribution: Attribution | None = None, **fields: object
) -> EventRecord:
    values: dict[str, object] = {
        "event_id": event_id,
        "type": "view",
        "user_id": "u1",
        "session_id": "",
        "item_id": "sku-1",
        "placement": "",
        "request_id": "",
        "slot": None,
        "value": None,
        "context": {},
        "occurred_at": occurred_at or timezone.now() - timedelta(minutes=1),
    }
    values.update(fields)
    return EventRecord(event=EventInput(**values), received_at=RECEIVED_AT, attribution=attribution)  # type: ignore[arg-type]


def stored(*fields: str) -> list[tuple[object, ...]]:
    return list(Event.objects.order_by("event_id").values_list(*(fields or STORED_FIELDS)))


def partition_of_events() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT event_id, tableoid::regclass::text FROM signals_app_event ORDER BY event_id")
        return dict(cursor.fetchall())


def this_month() -> datetime:
    start = month_start(timezone.now())
    return datetime(start.year, start.month, 1, tzinfo=UTC)


def in_month(months_from_now: int, *, day: int = 10) -> datetime:
    month = month_add(month_start(timezone.now()), months_from_now)
    return datetime(month.year, month.month, day, 12, tzinfo=UTC)


def test_append_stores_each_event_once_and_returns_only_the_new_ids():
    when = timezone.now() - timedelta(hours=1)
    batch = [
        record("e1", occurred_at=when),
        record("e2", occurred_at=when, user_id="", session_id="s-9", type="search", item_id=""),
        record("e1", occurred_at=when, item_id="sku-other"),  # repeated in the batch: the first one wins
    ]

    first = event_log_append(records=batch)
    second = event_log_append(records=[*batch, record("e3", occurred_at=when, user_id="u2")])

    assert (first, second) == ({"e1", "e2"}, {"e3"})
    assert stored() == [
        ("e1", "view", "u1", "", "sku-1", when),
        ("e2", "search", "", "s-9", "", when),
        ("e3", "view", "u2", "", "sku-1", when),
    ]
    assert list(EventId.objects.order_by("event_id").values_list("event_id", "occurred_at")) == [
        ("e1", when),
        ("e2", when),
        ("e3", when),
    ]
    assert sorted(Shopper.objects.values_list("external_id", flat=True)) == ["u1", "u2"]  # no shopper for a session


def test_append_keeps_an_event_id_already_logged_even_when_resent_with_another_time():
    event_log_append(records=[record("e1", occurred_at=in_month(0, day=1))])

    assert event_log_append(records=[record("e1", occurred_at=in_month(1))]) == set()
    assert stored("event_id", "occurred_at") == [("e1", in_month(0, day=1))]


def test_append_stores_every_field_with_the_attribution():
    when = timezone.now() - timedelta(minutes=5)
    attribution = Attribution(
        request_id="req-1", placement="home", slot=3, model_version="emb-7", score=0.25, source="similar"
    )
    event_log_append(
        records=[
            record(
                "e1",
                occurred_at=when,
                attribution=attribution,
                placement="home",
                request_id="req-1",
                slot=2,
                value=19.5,
                context={"device": "ios", "nested": {"a": [1, 2]}},
                type="click",
            ),
            record("e2", occurred_at=when),
        ]
    )

    fields = (
        "event_id",
        "type",
        "placement",
        "request_id",
        "slot",
        "value",
        "context",
        "received_at",
        "attributed_placement",
        "attributed_slot",
        "attributed_model_version",
        "attributed_score",
        "attributed_source",
    )
    assert stored(*fields) == [
        (
            "e1",
            "click",
            "home",
            "req-1",
            2,
            19.5,
            {"device": "ios", "nested": {"a": [1, 2]}},
            RECEIVED_AT,
            "home",
            3,
            "emb-7",
            0.25,
            "similar",
        ),
        ("e2", "view", "", "", None, None, {}, RECEIVED_AT, "", None, "", None, ""),
    ]


def test_append_of_a_batch_takes_a_fixed_number_of_statements():
    records = [record(f"e{index}", user_id=f"u{index % 50}") for index in range(1000)]

    with CaptureQueriesContext(connection) as queries:
        new_ids = event_log_append(records=records)

    statements = [query["sql"] for query in queries.captured_queries if "SAVEPOINT" not in query["sql"]]
    # The scratch table (a no-op once it exists), the batch, the move of the new ones into the log, the shoppers.
    assert [statement.split()[:3] for statement in statements[:3]] == [
        ["CREATE", "TEMP", "TABLE"],
        ["COPY", "signals_event_log_staging", "(event_id,"],
        ["WITH", "batch", "AS"],
    ]
    assert len(statements) == 4
    assert "graph_app_shopper" in statements[3]
    assert len(new_ids) == 1000
    assert Event.objects.count() == 1000
    assert Shopper.objects.count() == 50


def test_append_skips_shoppers_already_known_to_the_caller():
    known = {"u1"}

    event_log_append(records=[record("e1", user_id="u1"), record("e2", user_id="u2")], known_user_ids=known)

    assert list(Shopper.objects.values_list("external_id", flat=True)) == ["u2"]
    assert known == {"u1", "u2"}


def test_append_of_nothing_does_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert event_log_append(records=[]) == set()


def test_the_migration_made_partitions_for_this_month_and_the_next_two_and_a_default():
    names = set(event_log_partitions())

    assert names == {
        "signals_app_event_default",
        partition_name(month_add(month_start(timezone.now()), 0)),
        partition_name(month_add(month_start(timezone.now()), 1)),
        partition_name(month_add(month_start(timezone.now()), 2)),
    }
    assert event_log_partitions_ensure() == []


def test_events_land_in_the_partition_of_their_month_or_in_default():
    event_log_append(
        records=[
            record("now", occurred_at=in_month(0, day=1)),
            record("month-start", occurred_at=this_month()),  # the lower bound belongs to the month
            record("last-second", occurred_at=this_month() - timedelta(microseconds=1)),  # the month before
            record("next-month", occurred_at=in_month(1)),
            record("long-ago", occurred_at=datetime(2019, 3, 1, tzinfo=UTC)),
        ]
    )

    assert partition_of_events() == {
        "now": partition_name(month_start(in_month(0))),
        "month-start": partition_name(month_start(in_month(0))),
        "last-second": "signals_app_event_default",
        "next-month": partition_name(month_start(in_month(1))),
        "long-ago": "signals_app_event_default",
    }


def test_a_partition_for_a_month_in_default_takes_its_events_and_keeps_them_whole():
    attribution = Attribution(request_id="r", placement="home", slot=1, model_version="m", score=0.5, source="pop")
    event_log_append(
        records=[
            record("future-1", occurred_at=in_month(4, day=3), attribution=attribution, context={"k": "v"}),
            record("future-2", occurred_at=in_month(4, day=20), user_id="u2"),
            record("later", occurred_at=in_month(5)),
        ]
    )
    before = stored(*(field.attname for field in Event._meta.fields))

    created = event_log_partitions_ensure(months_ahead=4)

    month_4 = partition_name(month_start(in_month(4)))
    assert created == [partition_name(month_start(in_month(3))), month_4]
    assert stored(*(field.attname for field in Event._meta.fields)) == before
    assert partition_of_events() == {
        "future-1": month_4,
        "future-2": month_4,
        "later": "signals_app_event_default",
    }
    assert event_log_partitions()[month_4] == (
        f"FOR VALUES FROM ('{month_start(in_month(4)).isoformat()} 00:00:00+00') "
        f"TO ('{month_start(in_month(5)).isoformat()} 00:00:00+00')"
    )
    # New events of that month go to the new partition, and the ids stay unique across the move.
    assert event_log_append(
        records=[record("future-1", occurred_at=in_month(4)), record("future-3", occurred_at=in_month(4, day=28))]
    ) == {"future-3"}
    assert partition_of_events()["future-3"] == month_4
    assert event_log_partitions_ensure(months_ahead=4) == []


def test_partitions_for_past_months_can_be_made_for_history():
    event_log_append(records=[record("old", occurred_at=datetime(2021, 6, 30, 23, 59, tzinfo=UTC))])

    assert event_log_partitions_create(months=[date(2021, 6, 1), date(2021, 6, 1)]) == ["signals_app_event_p202106"]
    assert partition_of_events() == {"old": "signals_app_event_p202106"}


def test_partition_task_is_scheduled_daily_and_ensures_the_months_ahead():
    assert ("Create event log partitions", "signals.event_log_partitions_ensure", 1440) in DEFAULT_SCHEDULES

    created = event_log_partitions_ensure_task.apply(kwargs={"months_ahead": 3}).get()

    assert created == [partition_name(month_add(month_start(timezone.now()), 3))]


def test_orm_rows_still_work_with_the_partitioned_table():
    event = EventFactory(event_id="orm-1", occurred_at=in_month(1))

    fetched = Event.objects.get(pk=event.pk)

    assert (fetched.event_id, fetched.occurred_at, fetched.slot, fetched.attributed_source) == (
        "orm-1",
        in_month(1),
        None,
        "",
    )
    assert partition_of_events() == {"orm-1": partition_name(month_start(in_month(1)))}
    assert EventFactory(event_id="orm-2").pk > event.pk  # one identity sequence across partitions


def test_admin_lists_filters_searches_and_shows_events_read_only(admin_client):
    EventFactory(event_id="a-1", type="purchase", user_id="buyer", item_id="sku-9")
    EventFactory(event_id="a-2", type="view", user_id="browser", item_id="sku-9")
    event_log_append(
        records=[
            record(
                "a-3",
                attribution=Attribution(
                    request_id="r", placement="home", slot=0, model_version="m", score=1.0, source="similar"
                ),
            )
        ]
    )
    url = reverse("admin:graph_app_event_changelist")

    listing = admin_client.get(url)
    by_type = admin_client.get(url, {"type": "purchase"})
    attributed = admin_client.get(url, {"attributed": "yes"})
    searched = admin_client.get(url, {"q": "browser"})
    detail = admin_client.get(reverse("admin:graph_app_event_change", args=[Event.objects.get(event_id="a-1").pk]))

    assert [response.status_code for response in (listing, by_type, attributed, searched, detail)] == [200] * 5
    assert [event.event_id for event in listing.context["cl"].result_list] == ["a-3", "a-2", "a-1"]
    assert [event.event_id for event in by_type.context["cl"].result_list] == ["a-1"]
    assert [event.event_id for event in attributed.context["cl"].result_list] == ["a-3"]
    assert [event.event_id for event in searched.context["cl"].result_list] == ["a-2"]
    assert b"buyer" in detail.content
    assert not detail.context["has_change_permission"]
    assert admin_client.get(reverse("admin:graph_app_event_add")).status_code == 403


@pytest.mark.parametrize(
    "bad",
    [
        {"event_id": "x" * 101},  # longer than the column: refused by the append statement
        {"item_id": "nul\x00"},  # refused by COPY itself
    ],
)
def test_a_batch_the_database_refuses_raises_a_django_error_and_stores_nothing(bad):
    with pytest.raises(DatabaseError):
        event_log_append(records=[record("fine"), record(**{"event_id": "bad", **bad})])

    assert (Event.objects.count(), EventId.objects.count(), Shopper.objects.count()) == (0, 0, 0)
    assert event_log_append(records=[record("fine")]) == {"fine"}  # the connection is still usable


# --- the impression log: partitioned by day of served_at -------------------------------------------------------------


def impression(request_id: str, served_at: datetime, slot: int = 0) -> Impression:
    return Impression.objects.create(
        request_id=request_id, user_key="u1", placement="home", item_id="sku-1", slot=slot, served_at=served_at
    )


def partition_of_impressions() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT request_id, tableoid::regclass::text FROM signals_app_impression")
        return dict(cursor.fetchall())


def today() -> date:
    return timezone.now().astimezone(UTC).date()


def test_the_migration_made_the_impression_logs_days_ahead_and_a_default():
    expected = {IMPRESSION_LOG.name(today() + timedelta(days=offset)) for offset in range(IMPRESSION_DAYS_AHEAD + 1)}

    assert set(IMPRESSION_LOG.partitions()) == expected | {"signals_app_impression_default"}
    assert IMPRESSION_LOG.name(date(2026, 3, 9)) == "signals_app_impression_p20260309"


def test_impressions_land_in_the_partition_of_their_day_or_in_default():
    midnight = datetime.combine(today(), datetime.min.time(), tzinfo=UTC)
    impression("now", timezone.now())
    impression("midnight", midnight)  # the lower bound belongs to the day
    impression("tomorrow", midnight + timedelta(days=1, hours=23))
    impression("last-microsecond", midnight - timedelta(microseconds=1))  # the day before: no partition

    assert partition_of_impressions() == {
        "now": IMPRESSION_LOG.name(today()),
        "midnight": IMPRESSION_LOG.name(today()),
        "tomorrow": IMPRESSION_LOG.name(today() + timedelta(days=1)),
        "last-microsecond": "signals_app_impression_default",
    }


def test_a_replayed_impression_is_stored_once_and_a_slot_once_per_request():
    served_at = timezone.now()
    impression("r1", served_at)
    rows = [
        Impression(request_id="r1", user_key="u1", placement="home", item_id="sku-1", slot=0, served_at=served_at),
        Impression(request_id="r1", user_key="u1", placement="home", item_id="sku-2", slot=1, served_at=served_at),
    ]

    Impression.objects.bulk_create(rows, ignore_conflicts=True)

    assert sorted(Impression.objects.values_list("slot", "item_id")) == [(0, "sku-1"), (1, "sku-2")]


def test_maintenance_drops_the_days_past_retention_whole_and_keeps_the_others():
    now = timezone.now()
    IMPRESSION_LOG.create([(now - timedelta(days=days)).date() for days in (100, 91, 89)])
    for days in (100, 91, 89):
        impression(f"{days}-days-ago", now - timedelta(days=days))
    impression("95-days-ago-in-default", now - timedelta(days=95, hours=1))
    impression("30-days-ago-in-default", now - timedelta(days=30))

    report = impression_log_maintain(retention_days=90, now=now)

    # A day is dropped once all of it is older than the retention: the day 90 days ago still has younger rows.
    assert report.dropped == [IMPRESSION_LOG.name((now - timedelta(days=days)).date()) for days in (100, 91)]
    assert report.default_rows_deleted == 1
    assert report.created == []
    assert set(partition_of_impressions()) == {"89-days-ago", "30-days-ago-in-default"}
    assert IMPRESSION_LOG.name((now - timedelta(days=89)).date()) in IMPRESSION_LOG.partitions()


def test_maintenance_with_retention_0_keeps_everything_and_still_creates_days_ahead():
    impression("years-ago", timezone.now() - timedelta(days=3000))

    report = impression_log_maintain(retention_days=0, days_ahead=IMPRESSION_DAYS_AHEAD + 2)

    assert report.dropped == []
    assert report.created == [
        IMPRESSION_LOG.name(today() + timedelta(days=IMPRESSION_DAYS_AHEAD + offset)) for offset in (1, 2)
    ]
    assert set(partition_of_impressions()) == {"years-ago"}


def test_impression_maintenance_is_scheduled_daily_with_the_configured_retention(settings):
    settings.IMPRESSION_LOG_RETENTION_DAYS = 10
    impression("old", timezone.now() - timedelta(days=11))
    schedules = {task: minutes for _, task, minutes in DEFAULT_SCHEDULES}

    result = impression_log_maintain_task.apply().get()

    assert schedules["signals.impression_log_maintain"] == 1440
    assert result == {"created": [], "dropped": [], "default_rows_deleted": 1, "ranker_slates_deleted": 0}
    assert partition_of_impressions() == {}
