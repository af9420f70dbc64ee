"""The durable event log in PostgreSQL: append-only, partitioned by month of `occurred_at`, unique on event id.

`signals_app_event` is a declarative partitioned table (`PARTITION BY RANGE (occurred_at)`, migration 0003) with one
partition a month, `signals_app_event_pYYYYMM`, and a DEFAULT partition for events of months that have none yet.
A partitioned table cannot have a unique index on `event_id` alone, so the idempotency key lives in the plain table
`signals_app_eventid`: an append first inserts the ids there (`ON CONFLICT DO NOTHING`) and then only the events
whose ids were new, in the same statement and transaction.

Month boundaries are in UTC.

The impression log (`signals_app_impression`, migration 0008) is partitioned the same way, by day of `served_at`:
about ten rows a served slate, so a day's partition is what is dropped once past IMPRESSION_LOG_RETENTION_DAYS.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from graph_app.services import shoppers_ensure
from graph_app.state.ranker_log import ranker_slates_prune
from graph_app.state.records import EventRecord
from personalization.partitions import RangePartitions

logger = logging.getLogger(__name__)

EVENT_TABLE = "signals_app_event"
EVENT_LOG = RangePartitions(table=EVENT_TABLE, column="occurred_at", period="month", log_prefix="signals.event")
IMPRESSION_LOG = RangePartitions(
    table="signals_app_impression", column="served_at", period="day", log_prefix="signals.impression"
)
# Days of the impression log's partitions made ahead: a week of the daily task not running before rows go to DEFAULT.
IMPRESSION_DAYS_AHEAD = 7

_STAGING_TABLE = "signals_event_log_staging"
_STAGING_COLUMNS = (
    ("event_id", "varchar"),
    ("type", "varchar"),
    ("user_id", "varchar"),
    ("session_id", "varchar"),
    ("item_id", "varchar"),
    ("placement", "varchar"),
    ("request_id", "varchar"),
    ("slot", "int4"),
    ("value", "float8"),
    ("context", "text"),
    ("occurred_at", "timestamptz"),
    ("received_at", "timestamptz"),
    ("attributed_placement", "varchar"),
    ("attributed_slot", "int4"),
    ("attributed_model_version", "varchar"),
    ("attributed_score", "float8"),
    ("attributed_source", "varchar"),
)
_COLUMN_NAMES = ", ".join(name for name, _ in _STAGING_COLUMNS)
# A per-session scratch table the batch is COPYed into (binary COPY is about ten times cheaper for the client than
# array parameters). Temporary, so invisible to other sessions; emptied by the append statement itself.
_STAGING_SQL = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING_TABLE} "
    f"({', '.join(f'{name} {kind}' for name, kind in _STAGING_COLUMNS)}) ON COMMIT DELETE ROWS"
)
_COPY_SQL = f"COPY {_STAGING_TABLE} ({_COLUMN_NAMES}) FROM STDIN (FORMAT BINARY)"
# One statement: new ids into the key table, then only those events into the log. The batch is sorted by id so
# that two writers inserting overlapping ids take their key locks in the same order (no deadlock).
_APPEND_SQL = f"""
WITH batch AS (
    DELETE FROM {_STAGING_TABLE} RETURNING *
), new_ids AS (
    INSERT INTO signals_app_eventid (event_id, occurred_at)
    SELECT event_id, occurred_at FROM batch ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO {EVENT_TABLE} ({_COLUMN_NAMES})
SELECT {", ".join("b.context::jsonb" if name == "context" else f"b.{name}" for name, _ in _STAGING_COLUMNS)}
FROM batch b JOIN new_ids n ON n.event_id = b.event_id
RETURNING event_id
"""


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _row(record: EventRecord) -> tuple[object, ...]:
    event, attribution = record.event, record.attribution
    return (
        event.event_id,
        event.type,
        event.user_id,
        event.session_id,
        event.item_id,
        event.placement,
        event.request_id,
        event.slot,
        event.value,
        orjson.dumps(event.context).decode(),
        _aware(event.occurred_at),
        _aware(record.received_at),
        attribution.placement if attribution else "",
        attribution.slot if attribution else None,
        attribution.model_version if attribution else "",
        attribution.score if attribution else None,
        attribution.source if attribution else "",
    )


def event_log_append(*, records: list[EventRecord], known_user_ids: set[str] | None = None) -> set[str]:
    """Store the events whose ids the log does not hold yet, each once; return those ids.

    One transaction: the batch is COPYed into a session scratch table, one statement moves the new ones into the
    log, and one more adds the shoppers of new user ids. Calling it again with the same records stores nothing.
    Within a batch the first record of an id wins. `known_user_ids` (users already known to exist, e.g. during a
    long import) are not sent to the shopper table again; the new ones are added to it.
    """
    unique: dict[str, EventRecord] = {}
    for record in records:
        unique.setdefault(record.event.event_id, record)
    if not unique:
        return set()
    batch = list(unique.values())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_STAGING_SQL)
        # As for execute(): the driver's errors become Django's (DatabaseError and subclasses).
        with connection.wrap_database_errors, cursor.copy(_COPY_SQL) as copy:
            copy.set_types([kind for _, kind in _STAGING_COLUMNS])
            for record in batch:
                copy.write_row(_row(record))
        cursor.execute(_APPEND_SQL)
        new_ids = {row[0] for row in cursor.fetchall()}
        users = {record.event.user_id for record in batch if record.event.user_id and record.event.event_id in new_ids}
        if known_user_ids is not None:
            users -= known_user_ids
        shoppers_ensure(external_ids=users)
    if known_user_ids is not None:
        known_user_ids |= users
    return new_ids


def month_start(moment: datetime) -> date:
    return EVENT_LOG.start_of(moment)


def month_add(month: date, months: int) -> date:
    return EVENT_LOG.add(month, months)


def partition_name(month: date) -> str:
    return EVENT_LOG.name(month)


def event_log_partitions() -> dict[str, str]:
    """The partitions of the log and their bounds, by name (the DEFAULT partition included)."""
    return EVENT_LOG.partitions()


def event_log_estimated_count() -> int:
    """The number of events from the planner's statistics (0 before the first ANALYZE), without a scan."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [EVENT_TABLE],
        )
        return int(cursor.fetchone()[0])


def event_log_partition_months() -> set[date]:
    """The months that have a partition."""
    return EVENT_LOG.starts()


def event_log_partitions_create(*, months: Iterable[date]) -> list[str]:
    """Create the monthly partitions of these months that are missing (taking over the events DEFAULT holds for
    them); the names of those created."""
    return EVENT_LOG.create(months)


def event_log_partitions_ensure(*, months_ahead: int = 2, now: datetime | None = None) -> list[str]:
    """The partitions of this month and the `months_ahead` next ones exist afterwards; the names created."""
    return EVENT_LOG.ensure(ahead=months_ahead, now=now)


@dataclass(frozen=True)
class ImpressionLogMaintenance:
    created: list[str]
    dropped: list[str]
    default_rows_deleted: int
    ranker_slates_deleted: int = 0


def impression_log_maintain(
    *, days_ahead: int = IMPRESSION_DAYS_AHEAD, retention_days: int | None = None, now: datetime | None = None
) -> ImpressionLogMaintenance:
    """The impression log's daily partitions exist for today and `days_ahead` days, and those wholly older than
    the retention (IMPRESSION_LOG_RETENTION_DAYS; 0 keeps everything) are dropped, with the ranker's logged pools
    of that age (useless without their impressions)."""
    now = now or timezone.now()
    retention = settings.IMPRESSION_LOG_RETENTION_DAYS if retention_days is None else retention_days
    created = IMPRESSION_LOG.ensure(ahead=days_ahead, now=now)
    if retention <= 0:
        return ImpressionLogMaintenance(created=created, dropped=[], default_rows_deleted=0)
    horizon = now - timedelta(days=retention)
    dropped, deleted = IMPRESSION_LOG.drop_before(horizon)
    pools = ranker_slates_prune(before=horizon)
    return ImpressionLogMaintenance(
        created=created, dropped=dropped, default_rows_deleted=deleted, ranker_slates_deleted=pools
    )
