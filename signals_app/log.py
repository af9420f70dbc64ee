"""The durable event log in PostgreSQL: append-only, partitioned by month of `occurred_at`, unique on event id.

`signals_app_event` is a declarative partitioned table (`PARTITION BY RANGE (occurred_at)`, migration 0003) with one
partition a month, `signals_app_event_pYYYYMM`, and a DEFAULT partition for events of months that have none yet.
A partitioned table cannot have a unique index on `event_id` alone, so the idempotency key lives in the plain table
`signals_app_eventid`: an append first inserts the ids there (`ON CONFLICT DO NOTHING`) and then only the events
whose ids were new, in the same statement and transaction.

Month boundaries are in UTC.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime

import orjson
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from graph_app.services import shoppers_ensure
from signals_app.records import EventRecord

logger = logging.getLogger(__name__)

EVENT_TABLE = "signals_app_event"
DEFAULT_PARTITION = "signals_app_event_default"
PARTITION_PREFIX = "signals_app_event_p"
# Serialises partition maintenance (the daily task, imports and migrations may run at once).
PARTITIONS_LOCK_KEY = 0x5E_0001

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
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def month_add(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"{PARTITION_PREFIX}{month.year:04d}{month.month:02d}"


def event_log_partitions() -> dict[str, str]:
    """The partitions of the log and their bounds, by name (the DEFAULT partition included)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass ORDER BY c.relname",
            [EVENT_TABLE],
        )
        return dict(cursor.fetchall())


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
    return {
        date(int(name[-6:-2]), int(name[-2:]), 1)
        for name in event_log_partitions()
        if name.startswith(PARTITION_PREFIX) and name[-6:].isdigit()
    }


def event_log_partitions_create(*, months: Iterable[date]) -> list[str]:
    """Create the monthly partitions of these months that are missing; the names of those created.

    Events of such a month already in the DEFAULT partition are moved into the new one: Postgres refuses a
    partition whose range the DEFAULT partition holds rows of. The new month is built as a plain table, filled
    from DEFAULT and attached, all in one transaction that locks DEFAULT meanwhile (appends to months that have
    a partition are not blocked; reads and appends that touch DEFAULT wait, briefly when it is near empty).
    """
    wanted = sorted({month.replace(day=1) for month in months})
    created: list[str] = []
    if not wanted:
        return created
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITIONS_LOCK_KEY])
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [EVENT_TABLE],
        )
        existing = {row[0] for row in cursor.fetchall()}
        for month in wanted:
            name = partition_name(month)
            if name not in existing:
                _partition_create(cursor, name=name, month=month, has_default=DEFAULT_PARTITION in existing)
                created.append(name)
    if created:
        logger.info("signals.event_partitions_created", extra={"partitions": created})
    return created


def _partition_create(cursor: CursorWrapper, *, name: str, month: date, has_default: bool) -> None:
    following = month_add(month, 1)
    lower = f"'{month.isoformat()} 00:00:00+00'"
    upper = f"'{following.isoformat()} 00:00:00+00'"
    in_range = f"occurred_at >= {lower}::timestamptz AND occurred_at < {upper}::timestamptz"
    execute = cursor.execute
    execute(
        f"CREATE TABLE {name} (LIKE {EVENT_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE "
        "INCLUDING COMPRESSION)"
    )
    # Lets ATTACH skip scanning the new table to prove its rows fit the range.
    execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds CHECK (occurred_at IS NOT NULL AND {in_range})")
    if has_default:
        execute(f"LOCK TABLE ONLY {EVENT_TABLE} IN SHARE UPDATE EXCLUSIVE MODE")
        execute(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
        execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            [EVENT_TABLE],
        )
        columns = ", ".join(row[0] for row in cursor.fetchall())
        execute(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE {in_range} RETURNING {columns}) "
            f"INSERT INTO {name} ({columns}) SELECT {columns} FROM moved"
        )
        moved = cursor.rowcount
        if moved:
            logger.info("signals.event_partition_filled_from_default", extra={"partition": name, "events": moved})
    execute(f"ALTER TABLE {EVENT_TABLE} ATTACH PARTITION {name} FOR VALUES FROM ({lower}) TO ({upper})")
    execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bounds")


def event_log_partitions_ensure(*, months_ahead: int = 2, now: datetime | None = None) -> list[str]:
    """The partitions of this month and the `months_ahead` next ones exist afterwards; the names created."""
    first = month_start(now or timezone.now())
    return event_log_partitions_create(months=[month_add(first, offset) for offset in range(months_ahead + 1)])
