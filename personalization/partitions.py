"""Tables partitioned by range of a timestamp column, one partition a month or a day, plus a DEFAULT partition for
rows of periods that have none yet: creating the partitions of periods (taking over the rows DEFAULT holds for
them) and dropping those past a retention.

Partitions are named `<table>_pYYYYMM` (months) or `<table>_pYYYYMMDD` (days); periods start at midnight UTC.
Maintenance is serialised by an advisory lock (a beat task, an import and a migration may run at once). Dropping a
day's or a month's partition is instant and leaves no dead rows behind, where deleting old rows would not be.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

logger = logging.getLogger(__name__)

# Serialises partition maintenance of every partitioned table.
PARTITIONS_LOCK_KEY = 0x5E_0001


@dataclass(frozen=True)
class RangePartitions:
    table: str
    column: str
    period: Literal["month", "day"]
    # What maintenance logs its changes as ("signals.event_partitions_created", ...).
    log_prefix: str

    @property
    def prefix(self) -> str:
        return f"{self.table}_p"

    @property
    def default(self) -> str:
        return f"{self.table}_default"

    def start_of(self, moment: datetime) -> date:
        """The first day of the period `moment` falls in."""
        moment = moment.astimezone(UTC)
        return date(moment.year, moment.month, 1) if self.period == "month" else moment.date()

    def add(self, start: date, periods: int) -> date:
        if self.period == "day":
            return start + timedelta(days=periods)
        index = start.year * 12 + start.month - 1 + periods
        return date(index // 12, index % 12 + 1, 1)

    def name(self, start: date) -> str:
        return self.prefix + start.strftime("%Y%m" if self.period == "month" else "%Y%m%d")

    def start_from_name(self, name: str) -> date | None:
        """The period a partition holds, from its name (None for DEFAULT or a table not made here)."""
        suffix = name.removeprefix(self.prefix)
        if suffix == name or not suffix.isdigit() or len(suffix) != (6 if self.period == "month" else 8):
            return None
        return date(int(suffix[:4]), int(suffix[4:6]), int(suffix[6:]) if self.period == "day" else 1)

    def partitions(self) -> dict[str, str]:
        """The partitions and their bounds, by name (DEFAULT included)."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass ORDER BY c.relname",
                [self.table],
            )
            return dict(cursor.fetchall())

    def starts(self) -> set[date]:
        """The periods that have a partition."""
        return {start for name in self.partitions() if (start := self.start_from_name(name)) is not None}

    def create(self, starts: Iterable[date]) -> list[str]:
        """Create the partitions of these periods that are missing; the names of those created.

        Rows of such a period already in DEFAULT are moved into the new partition: Postgres refuses a partition
        whose range DEFAULT holds rows of. The new partition is built as a plain table, filled from DEFAULT and
        attached, all in one transaction that locks DEFAULT meanwhile (writes to periods that have a partition are
        not blocked; reads and writes that touch DEFAULT wait, briefly when it is near empty).
        """
        wanted = sorted({self.start_of(_midnight(day)) for day in starts})
        created: list[str] = []
        if not wanted:
            return created
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITIONS_LOCK_KEY])
            existing = set(self.partitions())
            for start in wanted:
                name = self.name(start)
                if name not in existing:
                    self._create(cursor, name=name, start=start, has_default=self.default in existing)
                    created.append(name)
        if created:
            logger.info(f"{self.log_prefix}_partitions_created", extra={"partitions": created})
        return created

    def ensure(self, *, ahead: int, now: datetime | None = None) -> list[str]:
        """The partitions of the current period and the `ahead` next ones exist afterwards; the names created."""
        first = self.start_of(now or datetime.now(UTC))
        return self.create(self.add(first, offset) for offset in range(ahead + 1))

    def drop_before(self, cutoff: datetime) -> tuple[list[str], int]:
        """Drop the partitions whose whole period ends at or before `cutoff`, and delete DEFAULT's rows older than
        it; the partitions dropped and the rows deleted from DEFAULT."""
        dropped: list[str] = []
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [PARTITIONS_LOCK_KEY])
            existing = self.partitions()
            for name in existing:
                start = self.start_from_name(name)
                if start is not None and _midnight(self.add(start, 1)) <= cutoff:
                    cursor.execute(f"DROP TABLE {name}")
                    dropped.append(name)
            deleted = 0
            if self.default in existing:
                cursor.execute(f"DELETE FROM {self.default} WHERE {self.column} < %s", [cutoff])
                deleted = cursor.rowcount
        if dropped or deleted:
            logger.info(
                f"{self.log_prefix}_partitions_dropped", extra={"partitions": dropped, "default_rows_deleted": deleted}
            )
        return dropped, deleted

    def _create(self, cursor: CursorWrapper, *, name: str, start: date, has_default: bool) -> None:
        lower = f"'{start.isoformat()} 00:00:00+00'"
        upper = f"'{self.add(start, 1).isoformat()} 00:00:00+00'"
        in_range = f"{self.column} >= {lower}::timestamptz AND {self.column} < {upper}::timestamptz"
        execute = cursor.execute
        execute(
            f"CREATE TABLE {name} (LIKE {self.table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE "
            "INCLUDING COMPRESSION)"
        )
        # Lets ATTACH skip scanning the new table to prove its rows fit the range.
        execute(f"ALTER TABLE {name} ADD CONSTRAINT {name}_bounds CHECK ({self.column} IS NOT NULL AND {in_range})")
        if has_default:
            execute(f"LOCK TABLE ONLY {self.table} IN SHARE UPDATE EXCLUSIVE MODE")
            execute(f"LOCK TABLE {self.default} IN ACCESS EXCLUSIVE MODE")
            execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum",
                [self.table],
            )
            columns = ", ".join(row[0] for row in cursor.fetchall())
            execute(
                f"WITH moved AS (DELETE FROM {self.default} WHERE {in_range} RETURNING {columns}) "
                f"INSERT INTO {name} ({columns}) SELECT {columns} FROM moved"
            )
            moved = cursor.rowcount
            if moved:
                logger.info(
                    f"{self.log_prefix}_partition_filled_from_default", extra={"partition": name, "rows": moved}
                )
        execute(f"ALTER TABLE {self.table} ATTACH PARTITION {name} FOR VALUES FROM ({lower}) TO ({upper})")
        execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bounds")


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
