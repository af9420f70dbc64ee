"""Resumable imports of large files (control plane): what the event and catalog importers share.

A file (CSV, TSV or JSON lines, optionally gzipped) is read as rows, in batches; the importer's own function
validates and writes each batch. After each committed batch a checkpoint (the file's fingerprint, the byte offset
and line reached in the decompressed input, the size of the rejects file, the running totals) is written next to
the input, so that a later run resumes after the last committed batch. Rejected rows go to a rejects file as JSON
lines `{line, errors: [{field, message}], row}`, and the first few problems into the report.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import gzip
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, cast

import orjson
from tqdm import tqdm

ERRORS_KEPT = 10
FINGERPRINT_BYTES = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"


class ImportFileError(Exception):
    """The file cannot be imported at all (unknown format, bad header, a checkpoint of another file)."""


@dataclass(frozen=True)
class RowProblem:
    line: int
    field: str
    message: str


@dataclass(slots=True)
class SourceRow:
    """One record of the file: its first line, its fields (None when unreadable), its text, what is wrong so far."""

    line: int
    raw: dict[str, Any] | None
    text: bytes | str
    problems: list[tuple[str, str]]


Problems = list[tuple[str, str]]
Rejected = list[tuple[SourceRow, Problems]]
# (rows, where each row ends: byte offset and last line) from a stream positioned at (offset, line).
RowReader = Callable[..., Iterator[tuple[SourceRow, int, int]]]


@dataclass
class ImportCounts:
    """Rows read and rejected; an importer's subclass adds what its writes count."""

    read: int = 0
    rejected: int = 0

    def add(self, other: ImportCounts) -> None:
        for counter in fields(self):
            setattr(self, counter.name, getattr(self, counter.name) + getattr(other, counter.name))


CountsT = TypeVar("CountsT", bound=ImportCounts)


@dataclass
class ImportReport(Generic[CountsT]):
    """What this run did (`counts`), and since the first run of an import resumed from a checkpoint (`totals`)."""

    file_format: str
    counts: CountsT
    totals: CountsT
    errors: list[RowProblem] = field(default_factory=list)
    resumed_at_line: int = 0
    last_line: int = 0
    batches: int = 0
    finished: bool = False
    seconds: float = 0.0


@dataclass
class Checkpoint(Generic[CountsT]):
    fingerprint: str
    file_format: str
    totals: CountsT
    offset: int = 0
    line: int = 0
    rejects_size: int = 0
    finished: bool = False
    # How the importer reads this file, fixed by its first run (e.g. a catalog's stock feed).
    mode: str = ""

    @classmethod
    def load(cls, path: Path, counts_type: type[CountsT]) -> Checkpoint[CountsT] | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(**{**data, "totals": counts_type(**data["totals"])})

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(asdict(self)))
        os.replace(temporary, path)  # atomic: a crash leaves the previous checkpoint or this one


def checkpoint_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".import-checkpoint.json")


def import_format(path: Path, declared: str | None, *, by_suffix: dict[str, str]) -> str:
    """The declared format, or the one the file's extension (under any .gz) names."""
    known = sorted(set(by_suffix.values()))
    if declared:
        if declared not in known:
            raise ImportFileError(f"Unknown format '{declared}': {' or '.join(known)}.")
        return declared
    name = path.name.lower().removesuffix(".gz")
    for suffix, file_format in by_suffix.items():
        if name.endswith(suffix):
            return file_format
    raise ImportFileError(
        f"Cannot tell the format of {path.name} from its extension: give --format {' or '.join(known)}."
    )


def checkpoint_open(
    *,
    path: Path,
    checkpoint_path: Path,
    file_format: str,
    counts_type: type[CountsT],
    restart: bool,
    restart_hint: str,
    mode: str = "",
) -> Checkpoint[CountsT]:
    """The checkpoint to resume from, or a new one; refused when it was written for another file, format or mode."""
    fingerprint = _fingerprint(path)
    checkpoint = None if restart else Checkpoint.load(checkpoint_path, counts_type)
    if checkpoint is not None and (checkpoint.fingerprint, checkpoint.file_format, checkpoint.mode) != (
        fingerprint,
        file_format,
        mode,
    ):
        raise ImportFileError(
            f"The checkpoint {checkpoint_path} belongs to another file or format: give --restart to import from the "
            f"start ({restart_hint})."
        )
    return checkpoint or Checkpoint(fingerprint=fingerprint, file_format=file_format, totals=counts_type(), mode=mode)


def _fingerprint(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(FINGERPRINT_BYTES)).hexdigest()


def open_input(path: Path) -> tuple[IO[bytes], IO[bytes]]:
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


def csv_header(path: Path, *, delimiter: str = ",") -> list[str]:
    """The first record's names, stripped (and without a byte-order mark); [] for an empty file."""
    stream, raw = open_input(path)
    try:
        return _header(csv.reader(_Lines(stream, offset=0, line=0), delimiter=delimiter))
    finally:
        stream.close()
        raw.close()


def _header(reader: Iterator[list[str]]) -> list[str]:
    try:
        return [name.strip().lstrip("\ufeff") for name in next(reader)]
    except StopIteration:
        return []


def csv_rows(
    stream: IO[bytes],
    *,
    offset: int,
    line: int,
    record_name: str,
    header_check: Callable[[list[str]], list[str]],
    delimiter: str = ",",
    typed: Callable[[dict[str, Any], Problems], dict[str, Any]] | None = None,
) -> Iterator[tuple[SourceRow, int, int]]:
    """(row, offset after it, last line of it) from CSV with a header. `header_check` raises ImportFileError or
    gives the names the columns' cells go under; empty cells are left out; `typed` converts the cells of a
    well-formed row. A malformed row is named by `record_name` in its problem."""
    header_lines = _Lines(stream, offset=0, line=0)
    header_reader = csv.reader(header_lines, delimiter=delimiter)
    header = _header(header_reader)
    if not header:
        return
    names = header_check(header)
    lines, reader = header_lines, header_reader
    if offset > header_lines.offset:
        stream.seek(offset)
        lines = _Lines(stream, offset=offset, line=line)
        reader = csv.reader(lines, delimiter=delimiter)
    columns = len(names)
    while True:
        lines.record.clear()
        lines.undecodable = False
        first_line = lines.line + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            row = SourceRow(first_line, None, b"".join(lines.record), [(record_name, f"Not valid CSV: {error}.")])
            yield row, lines.offset, lines.line
            continue
        if not values:
            continue
        problems: Problems = []
        if lines.undecodable:
            problems.append((record_name, "Not valid UTF-8."))
        elif len(values) != columns:
            problems.append((record_name, f"Expected {columns} columns, found {len(values)}."))
        raw = None
        if not problems:
            raw = {name: value for name, value in zip(names, values, strict=True) if value}
            if typed is not None:
                raw = typed(raw, problems)
        yield SourceRow(first_line, raw, b"".join(lines.record), problems), lines.offset, lines.line


def first_json_object(path: Path) -> dict[str, Any] | None:
    """The first non-blank line of a JSON lines file, when it is an object."""
    stream, raw = open_input(path)
    try:
        for raw_line in stream:
            if raw_line.strip():
                try:
                    value = orjson.loads(raw_line)
                except orjson.JSONDecodeError:
                    return None
                return value if isinstance(value, dict) else None
        return None
    finally:
        stream.close()
        raw.close()


def jsonl_rows(stream: IO[bytes], *, offset: int, line: int, record_name: str) -> Iterator[tuple[SourceRow, int, int]]:
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
            yield SourceRow(line, None, raw_line, [(record_name, f"Not valid JSON: {error}.")]), offset, line
            continue
        if not isinstance(raw, dict):
            yield SourceRow(line, None, raw_line, [(record_name, "Must be a JSON object.")]), offset, line
            continue
        yield SourceRow(line, raw, raw_line, []), offset, line


def reject_line(row: SourceRow, problems: Problems) -> bytes:
    text = row.text.decode("utf-8", "replace") if isinstance(row.text, bytes) else row.text
    return orjson.dumps(
        {
            "line": row.line,
            "errors": [{"field": name, "message": message} for name, message in problems],
            "row": text.rstrip("\r\n"),
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def _rejects_open(rejects_path: Path | None, checkpoint: Checkpoint[Any]) -> IO[bytes] | None:
    if rejects_path is None:
        return None
    resuming = bool(checkpoint.line) and rejects_path.exists()
    rejects = rejects_path.open("r+b" if resuming else "wb")
    if resuming and rejects_path.stat().st_size >= checkpoint.rejects_size:
        rejects.truncate(checkpoint.rejects_size)  # drop the rejects of a batch that was not checkpointed
    rejects.seek(0, os.SEEK_END)
    return rejects


def file_import_run(
    *,
    path: Path,
    report: ImportReport[CountsT],
    checkpoint: Checkpoint[CountsT],
    checkpoint_path: Path,
    read_rows: RowReader,
    import_batch: Callable[[list[SourceRow]], tuple[CountsT, Rejected]],
    batch_size: int,
    rejects_path: Path | None = None,
    max_batches: int | None = None,
    progress: IO[str] | None = None,
    noun: str = "rows",
) -> None:
    """Read the file from the checkpoint on, batch by batch: `import_batch` validates and commits a batch's rows
    (its counts say what it did, beside `read`, and which rows it rejected); then the rejects and the checkpoint
    are written. Fills `report`; stops at the end of the file or after `max_batches`."""
    started = time.perf_counter()
    report.last_line = report.resumed_at_line = checkpoint.line
    with _collection_between_batches():
        _batches_run(
            path=path,
            report=report,
            checkpoint=checkpoint,
            checkpoint_path=checkpoint_path,
            read_rows=read_rows,
            import_batch=import_batch,
            batch_size=batch_size,
            rejects_path=rejects_path,
            max_batches=max_batches,
            progress=progress,
            noun=noun,
        )
    report.seconds = time.perf_counter() - started


@contextlib.contextmanager
def _collection_between_batches() -> Iterator[None]:
    """The cycle collector off while batches run, and run between them over what is new since the import started:
    its automatic passes over a batch's many young objects cost a third of a catalog import's time."""
    enabled = gc.isenabled()
    gc.freeze()  # what existed before the import is not scanned again
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def _batches_run(
    *,
    path: Path,
    report: ImportReport[CountsT],
    checkpoint: Checkpoint[CountsT],
    checkpoint_path: Path,
    read_rows: RowReader,
    import_batch: Callable[[list[SourceRow]], tuple[CountsT, Rejected]],
    batch_size: int,
    rejects_path: Path | None,
    max_batches: int | None,
    progress: IO[str] | None,
    noun: str,
) -> None:
    rejects = _rejects_open(rejects_path, checkpoint)
    stream, raw = open_input(path)
    bar = tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, file=progress, disable=not progress
    )
    try:
        rows = read_rows(stream, offset=checkpoint.offset, line=checkpoint.line)
        while max_batches is None or report.batches < max_batches:
            gc.collect()
            batch, offset, line = _batch_read(rows, batch_size)
            if not batch:
                checkpoint.finished = report.finished = True
                checkpoint.save(checkpoint_path)
                break
            counts, rejected = import_batch(batch)
            counts.read = len(batch)
            report.errors.extend(
                RowProblem(row.line, name, message)
                for row, problems in rejected[: ERRORS_KEPT - len(report.errors)]
                for name, message in problems
            )
            del report.errors[ERRORS_KEPT:]
            if rejects is not None and rejected:
                rejects.write(b"".join(reject_line(row, problems) for row, problems in rejected))
                rejects.flush()
            report.counts.add(counts)
            report.totals.add(counts)
            report.batches += 1
            report.last_line = checkpoint.line = line
            checkpoint.offset = offset
            checkpoint.rejects_size = rejects.tell() if rejects is not None else 0
            checkpoint.save(checkpoint_path)
            bar.update(raw.tell() - bar.n)
            bar.set_postfix({noun: report.counts.read, "rejected": report.counts.rejected}, refresh=False)
    finally:
        bar.close()
        stream.close()
        raw.close()
        if rejects is not None:
            rejects.close()


def _batch_read(rows: Iterator[tuple[SourceRow, int, int]], batch_size: int) -> tuple[list[SourceRow], int, int]:
    """Up to batch_size rows and where the last one ends in the file."""
    batch: list[SourceRow] = []
    offset = line = -1
    for row, offset, line in rows:  # noqa: B007 (the offset and line of the last row are the batch's end)
        batch.append(row)
        if len(batch) >= batch_size:
            break
    return batch, offset, line
