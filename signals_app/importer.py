"""Historical import of events from CSV or JSON lines into the durable log (control plane).

Every row goes through the API's validation (`event_validate`), plus one rule of its own: a historical event must
carry its timestamp. Valid events are appended in batches by `event_log_append`, so the log's deduplication by
event id applies (a resent file, or an id repeated inside it, is stored once). Months the events fall in get their
partitions first, so history does not pile up in the DEFAULT partition.

Each committed batch's newly stored events are then applied to the Redis online state (recent items in event-time
order, affinities, item counters and popularity windows, purchased and cool-down sets: `signals_app.history`), so
known customers are known online after an import. At most once, like late events: a crash between a batch's
commit and its apply leaves that batch out of the online state on resume (its events are duplicates by then);
`manage.py rebuild_online_state` recomputes it all from the log.

After each committed batch a checkpoint (the byte offset and line number reached in the decompressed input, the
size of the rejects file, the running totals) is written next to the input; a later run resumes from it.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson
from django.utils import timezone
from tqdm import tqdm

from signals_app.history import events_apply_online
from signals_app.log import event_log_append, event_log_partition_months, event_log_partitions_create, month_start
from signals_app.online_state import DEDUPE_WINDOW
from signals_app.records import EventRecord
from signals_app.validation import EventInput, event_validate

IMPORT_BATCH_SIZE = 5000
ERRORS_KEPT = 10
FINGERPRINT_BYTES = 64 * 1024
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
GZIP_MAGIC = b"\x1f\x8b"
UNIX_SECONDS = re.compile(r"\d+(\.\d*)?")


class ImportFileError(Exception):
    """The file cannot be imported at all (unknown format, bad header, a checkpoint of another file)."""


@dataclass(frozen=True)
class RowProblem:
    line: int
    field: str
    message: str


@dataclass
class ImportCounts:
    read: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0

    def add(self, other: ImportCounts) -> None:
        self.read += other.read
        self.imported += other.imported
        self.duplicates += other.duplicates
        self.rejected += other.rejected


@dataclass
class ImportReport:
    """What this run did (`counts`), and since the first run of an import resumed from a checkpoint (`totals`)."""

    file_format: str
    counts: ImportCounts = field(default_factory=ImportCounts)
    totals: ImportCounts = field(default_factory=ImportCounts)
    errors: list[RowProblem] = field(default_factory=list)
    resumed_at_line: int = 0
    last_line: int = 0
    batches: int = 0
    finished: bool = False
    seconds: float = 0.0
    partitions_created: list[str] = field(default_factory=list)
    # Events of this run applied to the online state.
    applied_online: int = 0


@dataclass
class Checkpoint:
    fingerprint: str
    file_format: str
    offset: int = 0
    line: int = 0
    rejects_size: int = 0
    finished: bool = False
    totals: ImportCounts = field(default_factory=ImportCounts)

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(**{**data, "totals": ImportCounts(**data["totals"])})

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(asdict(self)))
        os.replace(temporary, path)  # atomic: a crash leaves the previous checkpoint or this one


@dataclass(slots=True)
class _Row:
    line: int
    raw: dict[str, Any] | None
    text: bytes | str
    problems: list[tuple[str, str]]


def checkpoint_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".import-checkpoint.json")


def import_format(path: Path, declared: str | None = None) -> str:
    if declared:
        if declared not in ("csv", "jsonl"):
            raise ImportFileError(f"Unknown format '{declared}': csv or jsonl.")
        return declared
    name = path.name.lower().removesuffix(".gz")
    for suffix, file_format in FORMAT_BY_SUFFIX.items():
        if name.endswith(suffix):
            return file_format
    raise ImportFileError(f"Cannot tell the format of {path.name} from its extension: give --format csv or jsonl.")


def _fingerprint(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(FINGERPRINT_BYTES)).hexdigest()


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """The decompressed stream and the raw file under it (whose position the progress bar shows)."""
    raw = path.open("rb")
    compressed = raw.read(2) == GZIP_MAGIC
    raw.seek(0)
    if compressed:
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), raw
    return raw, raw


class _Lines:
    """The lines of a binary stream, decoded, counting bytes and lines consumed (csv reads exactly what it needs)."""

    def __init__(self, stream: IO[bytes], *, offset: int, line: int) -> None:
        self.stream = stream
        self.offset = offset
        self.line = line
        self.record: list[bytes] = []
        self.undecodable = False

    def __iter__(self) -> Iterator[str]:
        for raw_line in self.stream:
            self.offset += len(raw_line)
            self.line += 1
            self.record.append(raw_line)
            try:
                yield raw_line.decode("utf-8")
            except UnicodeDecodeError:
                self.undecodable = True
                yield raw_line.decode("utf-8", "replace")

    def record_start(self) -> None:
        self.record.clear()
        self.undecodable = False


def _csv_typed(raw: dict[str, Any], problems: list[tuple[str, str]]) -> dict[str, Any]:
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


def _csv_rows(stream: IO[bytes], *, offset: int, line: int) -> Iterator[tuple[_Row, int, int]]:
    """(row, offset after it, last line of it) from a CSV file with a header of event field names."""
    header_lines = _Lines(stream, offset=0, line=0)
    header_reader = csv.reader(header_lines)
    try:
        header = [name.strip().lstrip("\ufeff") for name in next(header_reader)]
    except StopIteration:
        return
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown or "event_id" not in header or "type" not in header:
        raise ImportFileError(
            f"The CSV header must name event fields ({', '.join(CSV_COLUMNS)}), with event_id and type; "
            f"unknown: {', '.join(unknown) or 'none'}."
        )
    lines, reader = header_lines, header_reader
    if offset > header_lines.offset:
        stream.seek(offset)
        lines = _Lines(stream, offset=offset, line=line)
        reader = csv.reader(lines)
    columns = len(header)
    while True:
        lines.record_start()
        first_line = lines.line + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            row = _Row(first_line, None, b"".join(lines.record), [("event", f"Not valid CSV: {error}.")])
            yield row, lines.offset, lines.line
            continue
        if not values:
            continue
        problems: list[tuple[str, str]] = []
        if lines.undecodable:
            problems.append(("event", "Not valid UTF-8."))
        elif len(values) != columns:
            problems.append(("event", f"Expected {columns} columns, found {len(values)}."))
        raw = None
        if not problems:
            raw = _csv_typed({name: value for name, value in zip(header, values, strict=True) if value}, problems)
        yield _Row(first_line, raw, b"".join(lines.record), problems), lines.offset, lines.line


def _jsonl_rows(stream: IO[bytes], *, offset: int, line: int) -> Iterator[tuple[_Row, int, int]]:
    if offset:
        stream.seek(offset)
    for raw_line in stream:
        offset += len(raw_line)
        line += 1
        if not raw_line.strip():
            continue
        try:
            raw = orjson.loads(raw_line)
        except orjson.JSONDecodeError as error:
            yield _Row(line, None, raw_line, [("event", f"Not valid JSON: {error}.")]), offset, line
            continue
        if not isinstance(raw, dict):
            yield _Row(line, None, raw_line, [("event", "Must be a JSON object.")]), offset, line
            continue
        yield _Row(line, raw, raw_line, []), offset, line


def _validated(row: _Row, now: datetime) -> EventInput | list[tuple[str, str]]:
    if row.raw is None:
        return row.problems
    result = event_validate(row.raw, now=now)
    if isinstance(result, EventInput) and not row.problems and row.raw.get("timestamp") is not None:
        return result
    problems = row.problems + (result if isinstance(result, list) else [])
    if row.raw.get("timestamp") is None:
        problems.append(("timestamp", "Required in an import (only the live API may default it to now)."))
    return problems


def _reject_line(row: _Row, problems: list[tuple[str, str]]) -> bytes:
    text = row.text.decode("utf-8", "replace") if isinstance(row.text, bytes) else row.text
    return orjson.dumps(
        {
            "line": row.line,
            "errors": [{"field": name, "message": message} for name, message in problems],
            "row": text.rstrip("\r\n"),
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


@dataclass
class _Batch:
    counts: ImportCounts
    records: list[EventRecord]
    rejected: list[tuple[_Row, list[tuple[str, str]]]]
    offset: int
    line: int


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
) -> ImportReport:
    """Import the file's events into the log, resuming from its checkpoint unless `restart`."""
    started = time.perf_counter()
    file_format = import_format(path, file_format)
    checkpoint_path = checkpoint_path or checkpoint_path_for(path)
    fingerprint = _fingerprint(path)
    checkpoint = None if restart else Checkpoint.load(checkpoint_path)
    if checkpoint is not None and (checkpoint.fingerprint, checkpoint.file_format) != (fingerprint, file_format):
        raise ImportFileError(
            f"The checkpoint {checkpoint_path} belongs to another file or format: give --restart to import from the "
            "start (events already in the log are skipped as duplicates)."
        )
    checkpoint = checkpoint or Checkpoint(fingerprint=fingerprint, file_format=file_format)
    # The report's totals are the checkpoint's: adding to one adds to the other.
    report = ImportReport(file_format=file_format, resumed_at_line=checkpoint.line, totals=checkpoint.totals)
    report.last_line = checkpoint.line

    rejects = None
    if rejects_path is not None:
        resuming = bool(checkpoint.line) and rejects_path.exists()
        rejects = rejects_path.open("r+b" if resuming else "wb")
        if resuming and rejects_path.stat().st_size >= checkpoint.rejects_size:
            rejects.truncate(checkpoint.rejects_size)  # drop the rejects of a batch that was not checkpointed
        rejects.seek(0, os.SEEK_END)
    stream, raw = _open(path)
    known_months = event_log_partition_months()
    known_users: set[str] = set()
    read_rows = _csv_rows if file_format == "csv" else _jsonl_rows
    bar = tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, file=progress, disable=not progress
    )
    try:
        rows = read_rows(stream, offset=checkpoint.offset, line=checkpoint.line)
        while max_batches is None or report.batches < max_batches:
            batch = _read_batch(rows, batch_size)
            if batch is None:
                checkpoint.finished = report.finished = True
                checkpoint.save(checkpoint_path)
                break
            report.errors.extend(
                RowProblem(row.line, name, message)
                for row, problems in batch.rejected[: ERRORS_KEPT - len(report.errors)]
                for name, message in problems
            )
            del report.errors[ERRORS_KEPT:]
            if rejects is not None and batch.rejected:
                rejects.write(b"".join(_reject_line(row, problems) for row, problems in batch.rejected))
                rejects.flush()
            months = {month_start(record.event.occurred_at) for record in batch.records} - known_months
            if months:
                report.partitions_created += event_log_partitions_create(months=months)
                known_months |= months
            new_ids = event_log_append(records=batch.records, known_user_ids=known_users)
            report.applied_online += _apply_online(batch.records, new_ids)
            batch.counts.imported = len(new_ids)
            batch.counts.duplicates = len(batch.records) - len(new_ids)
            report.counts.add(batch.counts)
            report.totals.add(batch.counts)
            report.batches += 1
            report.last_line = checkpoint.line = batch.line
            checkpoint.offset = batch.offset
            checkpoint.rejects_size = rejects.tell() if rejects is not None else 0
            checkpoint.save(checkpoint_path)
            bar.update(raw.tell() - bar.n)
            bar.set_postfix(events=report.counts.read, rejected=report.counts.rejected, refresh=False)
    finally:
        bar.close()
        stream.close()
        raw.close()
        if rejects is not None:
            rejects.close()
        report.seconds = time.perf_counter() - started
    return report


def _apply_online(records: list[EventRecord], new_ids: set[str]) -> int:
    """The batch's newly stored events (the first record of each id, as the log kept it) into the online state."""
    first: dict[str, EventRecord] = {}
    for record in records:
        if record.event.event_id in new_ids:
            first.setdefault(record.event.event_id, record)
    return events_apply_online(records=list(first.values()), dedupe_after=timezone.now() - DEDUPE_WINDOW)


def _read_batch(rows: Iterator[tuple[_Row, int, int]], batch_size: int) -> _Batch | None:
    """Up to batch_size rows, validated, and where they end in the file; None at the end of the file."""
    counts = ImportCounts()
    records: list[EventRecord] = []
    rejected: list[tuple[_Row, list[tuple[str, str]]]] = []
    now = timezone.now()
    offset = line = -1
    for row, offset, line in rows:  # noqa: B007 (the offset and line of the last row are the batch's end)
        counts.read += 1
        result = _validated(row, now)
        if isinstance(result, EventInput):
            records.append(EventRecord(event=result, received_at=now))
        else:
            rejected.append((row, result))
        if counts.read >= batch_size:
            break
    if not counts.read:
        return None
    counts.rejected = len(rejected)
    return _Batch(counts, records, rejected, offset, line)
