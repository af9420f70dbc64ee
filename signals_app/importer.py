"""Historical import of events from CSV or JSON lines into the durable log (control plane).

Every row goes through the API's validation (`event_validate`), plus one rule of its own: a historical event must
carry its timestamp. Valid events are appended in batches by `event_log_append`, so the log's deduplication by
event id applies (a resent file, or an id repeated inside it, is stored once). Months the events fall in get their
partitions first, so history does not pile up in the DEFAULT partition.

Each committed batch's newly stored events are then applied to the Redis online state (recent items in event-time
order, affinities, item counters and popularity windows, purchased and cool-down sets: `graph_app.state.history`), so
known customers are known online after an import. At most once, like late events: a crash between a batch's
commit and its apply leaves that batch out of the online state on resume (its events are duplicates by then);
`manage.py rebuild_online_state` recomputes it all from the log. For a large history into a platform whose
ingest is paused (a first load), `online_state=False` leaves the online state alone and the rebuild, run once
afterwards, computes each user's final state directly instead of replaying every event through the ingest script
(measured about five times faster: BENCHMARKS.md, "Scale: 1 M items, 1 M users, 20 M events").

After each committed batch a checkpoint (the byte offset and line number reached in the decompressed input, the
size of the rejects file, the running totals) is written next to the input; a later run resumes from it.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from django.utils import timezone

from graph_app.state.interface import (
    DEDUPE_WINDOW,
    EventInput,
    EventRecord,
    event_log_append,
    event_log_partition_months,
    event_log_partitions_create,
    events_apply_online,
    month_start,
)
from personalization import file_import
from personalization.file_import import (
    ImportFileError,
    Problems,
    Rejected,
    SourceRow,
    checkpoint_path_for,
)
from signals_app.validation import event_validate

IMPORT_BATCH_SIZE = 5000
CSV_COLUMNS = (
    "event_id",
    "type",
    "user_id",
    "session_id",
    "item_id",
    "timestamp",
    "placement",
    "request_id",
    "slot",
    "value",
    "context",
)
FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
UNIX_SECONDS = re.compile(r"\d+(\.\d*)?")


@dataclass
class ImportCounts(file_import.ImportCounts):
    imported: int = 0
    duplicates: int = 0


@dataclass
class ImportReport(file_import.ImportReport[ImportCounts]):
    counts: ImportCounts = field(default_factory=ImportCounts)
    totals: ImportCounts = field(default_factory=ImportCounts)
    partitions_created: list[str] = field(default_factory=list)
    # Events of this run applied to the online state.
    applied_online: int = 0


def import_format(path: Path, declared: str | None = None) -> str:
    return file_import.import_format(path, declared, by_suffix=FORMAT_BY_SUFFIX)


def _csv_typed(raw: dict[str, Any], problems: Problems) -> dict[str, Any]:
    """CSV cells are text: give the validator the types the API receives in JSON (it names what is still wrong)."""
    if "context" in raw:
        try:
            raw["context"] = orjson.loads(raw["context"])
        except orjson.JSONDecodeError:
            problems.append(("context", "Not valid JSON."))
            del raw["context"]
    for name, kind in (("slot", int), ("value", float)):
        if name in raw:
            with contextlib.suppress(ValueError):
                raw[name] = kind(raw[name])
    if "timestamp" in raw and UNIX_SECONDS.fullmatch(raw["timestamp"]):
        raw["timestamp"] = float(raw["timestamp"])
    return raw


def _csv_header_check(header: list[str]) -> list[str]:
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown or "event_id" not in header or "type" not in header:
        raise ImportFileError(
            f"The CSV header must name event fields ({', '.join(CSV_COLUMNS)}), with event_id and type; "
            f"unknown: {', '.join(unknown) or 'none'}."
        )
    return header


def _csv_rows(stream: IO[bytes], *, offset: int, line: int) -> Any:
    return file_import.csv_rows(
        stream, offset=offset, line=line, record_name="event", header_check=_csv_header_check, typed=_csv_typed
    )


def _jsonl_rows(stream: IO[bytes], *, offset: int, line: int) -> Any:
    return file_import.jsonl_rows(stream, offset=offset, line=line, record_name="event")


def _validated(row: SourceRow, now: datetime) -> EventInput | Problems:
    if row.raw is None:
        return row.problems
    result = event_validate(row.raw, now=now)
    if isinstance(result, EventInput) and not row.problems and row.raw.get("timestamp") is not None:
        return result
    problems = row.problems + (result if isinstance(result, list) else [])
    if row.raw.get("timestamp") is None:
        problems.append(("timestamp", "Required in an import (only the live API may default it to now)."))
    return problems


def events_import(
    *,
    path: Path,
    file_format: str | None = None,
    batch_size: int = IMPORT_BATCH_SIZE,
    rejects_path: Path | None = None,
    checkpoint_path: Path | None = None,
    restart: bool = False,
    max_batches: int | None = None,
    progress: IO[str] | None = None,
    online_state: bool = True,
) -> ImportReport:
    """Import the file's events into the log, resuming from its checkpoint unless `restart`; each batch's new events
    also into the online state unless not `online_state`."""
    file_format = import_format(path, file_format)
    checkpoint_path = checkpoint_path or checkpoint_path_for(path)
    checkpoint = file_import.checkpoint_open(
        path=path,
        checkpoint_path=checkpoint_path,
        file_format=file_format,
        counts_type=ImportCounts,
        restart=restart,
        restart_hint="events already in the log are skipped as duplicates",
    )
    # The report's totals are the checkpoint's: adding to one adds to the other.
    report = ImportReport(file_format=file_format, totals=checkpoint.totals)
    known_months = event_log_partition_months()
    known_users: set[str] = set()

    def import_batch(rows: list[SourceRow]) -> tuple[ImportCounts, Rejected]:
        now = timezone.now()
        records: list[EventRecord] = []
        rejected: Rejected = []
        for row in rows:
            result = _validated(row, now)
            if isinstance(result, EventInput):
                records.append(EventRecord(event=result, received_at=now))
            else:
                rejected.append((row, result))
        months = {month_start(record.event.occurred_at) for record in records} - known_months
        if months:
            report.partitions_created += event_log_partitions_create(months=months)
            known_months.update(months)
        new_ids = event_log_append(records=records, known_user_ids=known_users)
        if online_state:
            report.applied_online += _apply_online(records, new_ids)
        counts = ImportCounts(rejected=len(rejected), imported=len(new_ids), duplicates=len(records) - len(new_ids))
        return counts, rejected

    file_import.file_import_run(
        path=path,
        report=report,
        checkpoint=checkpoint,
        checkpoint_path=checkpoint_path,
        read_rows=_csv_rows if file_format == "csv" else _jsonl_rows,
        import_batch=import_batch,
        batch_size=batch_size,
        rejects_path=rejects_path,
        max_batches=max_batches,
        progress=progress,
        noun="events",
    )
    return report


def _apply_online(records: list[EventRecord], new_ids: set[str]) -> int:
    """The batch's newly stored events (the first record of each id, as the log kept it) into the online state."""
    first: dict[str, EventRecord] = {}
    for record in records:
        if record.event.event_id in new_ids:
            first.setdefault(record.event.event_id, record)
    return events_apply_online(records=list(first.values()), dedupe_after=timezone.now() - DEDUPE_WINDOW)
