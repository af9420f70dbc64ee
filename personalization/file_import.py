"""Resumable imports of large files (control plane): what the event and catalog importers share.

A file (CSV, TSV or JSON lines, optionally gzipped) is read as rows, in batches; the importer's own function
validates and writes each batch. After each committed batch a checkpoint (the file's fingerprint, the byte offset
and line reached in the decompressed input, the size of the rejects file, the running totals) is written next to
the input, so that a later run resumes after the last committed batch. Rejected rows go to a rejects file as JSON
lines `{line, errors: [{field, message}], row}`, and the first few problems into the report. An importer may have its
batches run in worker processes while the file is read (`workers`): what they did is recorded in the file's order.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import gzip
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Generic, NamedTuple, TypeVar, cast

import orjson
from django.db import connections
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
            raw = dict(zip(names, values, strict=True))
            if "" in raw.values():
                raw = {name: value for name, value in raw.items() if value}
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
    workers: int = 1,
    batch_claims: BatchClaims | None = None,
) -> None:
    """Read the file from the checkpoint on, batch by batch: `import_batch` validates and commits a batch's rows
    (its counts say what it did, beside `read`, and which rows it rejected); then the rejects and the checkpoint
    are written. Fills `report`; stops at the end of the file or after `max_batches`.

    With `workers` above 1 (and no transaction open, which other connections could not see into), batches run in
    that many worker processes, each with its own database connection, while this process reads the file; their
    outcomes are recorded in the file's order, so the checkpoint, rejects and counts are those of one batch after
    another. `batch_claims` says what each batch writes that no other batch may write at the same time."""
    started = time.perf_counter()
    report.last_line = report.resumed_at_line = checkpoint.line
    parallel = workers > 1 and not any(connection.in_atomic_block for connection in connections.all())
    with _collection_between_batches(), _Ledger(
        path=path, report=report, checkpoint=checkpoint, checkpoint_path=checkpoint_path,
        rejects_path=rejects_path, progress=progress, noun=noun,
    ) as ledger:  # fmt: skip
        rows = read_rows(ledger.stream, offset=checkpoint.offset, line=checkpoint.line)
        if parallel:
            _ParallelBatches(
                ledger=ledger,
                workers=workers,
                import_batch=import_batch,
                batch_claims=batch_claims or _no_claims,
            ).run(rows, batch_size=batch_size, max_batches=max_batches)
        else:
            _batches_run(ledger, rows, import_batch=import_batch, batch_size=batch_size, max_batches=max_batches)
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


class _Ledger(Generic[CountsT]):
    """The input stream, and what each committed batch leaves: the report, the rejects, the checkpoint, the bar."""

    def __init__(
        self,
        *,
        path: Path,
        report: ImportReport[CountsT],
        checkpoint: Checkpoint[CountsT],
        checkpoint_path: Path,
        rejects_path: Path | None,
        progress: IO[str] | None,
        noun: str,
    ) -> None:
        self.report, self.checkpoint, self.checkpoint_path, self.noun = report, checkpoint, checkpoint_path, noun
        self.rejects = _rejects_open(rejects_path, checkpoint)
        self.stream, self.raw = open_input(path)
        self.bar = tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, file=progress, disable=not progress
        )

    def __enter__(self) -> _Ledger[CountsT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()
        self.stream.close()
        self.raw.close()
        if self.rejects is not None:
            self.rejects.close()

    def record(self, *, offset: int, line: int, counts: CountsT, rejected: Rejected, read: int) -> None:
        """A committed batch, ending at (offset, line) of the file."""
        report, checkpoint = self.report, self.checkpoint
        counts.read = read
        report.errors.extend(
            RowProblem(row.line, name, message)
            for row, problems in rejected[: ERRORS_KEPT - len(report.errors)]
            for name, message in problems
        )
        del report.errors[ERRORS_KEPT:]
        if self.rejects is not None and rejected:
            self.rejects.write(b"".join(reject_line(row, problems) for row, problems in rejected))
            self.rejects.flush()
        report.counts.add(counts)
        report.totals.add(counts)
        report.batches += 1
        report.last_line = checkpoint.line = line
        checkpoint.offset = offset
        checkpoint.rejects_size = self.rejects.tell() if self.rejects is not None else 0
        checkpoint.save(self.checkpoint_path)
        # The bar shows the file read so far (with workers, somewhat ahead of what is recorded).
        self.bar.update(self.raw.tell() - self.bar.n)
        self.bar.set_postfix({self.noun: report.counts.read, "rejected": report.counts.rejected}, refresh=False)

    def finish(self) -> None:
        self.checkpoint.finished = self.report.finished = True
        self.checkpoint.save(self.checkpoint_path)


def _batches_run(
    ledger: _Ledger[CountsT],
    rows: Iterator[tuple[SourceRow, int, int]],
    *,
    import_batch: Callable[[list[SourceRow]], tuple[CountsT, Rejected]],
    batch_size: int,
    max_batches: int | None,
) -> None:
    while max_batches is None or ledger.report.batches < max_batches:
        gc.collect()
        batch, offset, line = _batch_read(rows, batch_size)
        if not batch:
            ledger.finish()
            break
        counts, rejected = import_batch(batch)
        ledger.record(offset=offset, line=line, counts=counts, rejected=rejected, read=len(batch))


# What a batch writes that no other batch may write at the same time: key -> value. Two batches conflict when they
# share a key with different values (an item both write; an entity both name, differently); the later one waits
# until the earlier has committed, so that the file's order decides, as when batches run one after another.
BatchClaims = Callable[[list[SourceRow]], dict[Hashable, Hashable]]


def _no_claims(rows: list[SourceRow]) -> dict[Hashable, Hashable]:
    return {}


def _conflict(claims: dict[Hashable, Hashable], other: dict[Hashable, Hashable]) -> bool:
    # What one claims that the other does not claim alike (set operations, in C: thousands of claims a batch).
    return not other.keys().isdisjoint(key for key, _ in claims.items() - other.items())


class _Task(NamedTuple):
    """A batch for a worker: its rows as (line, fields, problems); their text stays with the parent, which writes
    the rejects."""

    sequence: int
    rows: list[tuple[int, dict[str, Any] | None, Problems]]


class _Outcome(NamedTuple):
    """A worker's answer: the batch's counts and rejected rows (by their index in the batch), or its error."""

    sequence: int
    counts: Any = None
    rejected: tuple[tuple[int, Problems], ...] = ()
    error: BaseException | None = None


# A worker finishes the batch it is running before it stops (its commit and the Redis publication after it).
WORKER_STOP_SECONDS = 60.0


class _Worker:
    """A forked process running the batches it is sent, one at a time, on its own database connection."""

    def __init__(self, context: Any, import_batch: Callable[[list[SourceRow]], tuple[Any, Rejected]]) -> None:
        self.channel, child_channel = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_channel, import_batch), daemon=True)
        self.process.start()
        child_channel.close()
        self.sequence: int | None = None  # the batch it is running

    def send(self, task: _Task) -> None:
        self.channel.send_bytes(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
        self.sequence = task.sequence

    def answer(self) -> _Outcome:
        sequence, self.sequence = self.sequence, None
        assert sequence is not None
        try:
            outcome: _Outcome = pickle.loads(self.channel.recv_bytes())
        except EOFError:
            exit_code = self.process.exitcode
            return _Outcome(sequence, error=RuntimeError(f"An import worker ended (exit code {exit_code})."))
        return outcome

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.channel.send_bytes(pickle.dumps(None))
        self.process.join(timeout=WORKER_STOP_SECONDS)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.channel.close()


def _worker_main(channel: Any, import_batch: Callable[[list[SourceRow]], tuple[Any, Rejected]]) -> None:
    """Run batches until told to stop. Ctrl-C is the parent's to handle: it lets the batch running finish."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            try:
                task: _Task | None = pickle.loads(channel.recv_bytes())
            except EOFError:
                break  # the parent is gone
            if task is None:
                break
            gc.collect()
            channel.send_bytes(pickle.dumps(_batch_run(task, import_batch), protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        connections.close_all()


def _batch_run(task: _Task, import_batch: Callable[[list[SourceRow]], tuple[Any, Rejected]]) -> _Outcome:
    rows = [SourceRow(line, raw, b"", problems) for line, raw, problems in task.rows]
    try:
        counts, rejected = import_batch(rows)
    except Exception as error:  # the parent raises it, after recording the batches before this one
        return _Outcome(task.sequence, error=_sendable(error))
    position = {id(row): index for index, row in enumerate(rows)}
    return _Outcome(task.sequence, counts, tuple((position[id(row)], problems) for row, problems in rejected))


def _sendable(error: Exception) -> Exception:
    """The error itself when it survives pickling, else its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # unpicklable: its text will do
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


@dataclass
class _Dispatched:
    """A batch sent to a worker: its rows, where it ends, its claims, and once the worker answered, the outcome."""

    rows: list[SourceRow]
    offset: int
    line: int
    claims: dict[Hashable, Hashable]
    worker: _Worker
    outcome: tuple[Any, Rejected] | None = None
    error: BaseException | None = None


class _ParallelBatches(Generic[CountsT]):
    """Batches read here, run by worker processes, recorded in the file's order as they commit."""

    def __init__(
        self,
        *,
        ledger: _Ledger[CountsT],
        workers: int,
        import_batch: Callable[[list[SourceRow]], tuple[CountsT, Rejected]],
        batch_claims: BatchClaims,
    ) -> None:
        self.ledger, self.worker_count = ledger, workers
        self.import_batch, self.batch_claims = import_batch, batch_claims
        self.dispatched: dict[int, _Dispatched] = {}  # by sequence, until recorded
        self.recorded = 0  # the sequence of the next batch to record
        self.failure: BaseException | None = None

    def run(self, rows: Iterator[tuple[SourceRow, int, int]], *, batch_size: int, max_batches: int | None) -> None:
        # Each worker opens its own connection: none may share this process's.
        connections.close_all()
        context = multiprocessing.get_context("fork")  # the workers start with what this process has loaded
        workers = [_Worker(context, self.import_batch) for _ in range(self.worker_count)]
        try:
            try:
                self._dispatch_all(rows, workers, batch_size=batch_size, max_batches=max_batches)
            except KeyboardInterrupt:
                self.failure = self.failure or KeyboardInterrupt()
                self._drain()  # the batches running commit: record them
        except KeyboardInterrupt:
            for worker in workers:  # a second Ctrl-C: stop them now (their transactions roll back)
                worker.process.terminate()
            raise
        finally:
            for worker in workers:
                worker.stop()
        if self.failure is not None:
            raise self.failure

    def _dispatch_all(
        self,
        rows: Iterator[tuple[SourceRow, int, int]],
        workers: list[_Worker],
        *,
        batch_size: int,
        max_batches: int | None,
    ) -> None:
        sequence = 0
        while self.failure is None and (max_batches is None or sequence < max_batches):
            if sequence % READER_COLLECT_BATCHES == 0:
                gc.collect()
            batch, offset, line = _batch_read(rows, batch_size)
            if not batch:
                self._drain()
                if self.failure is None:
                    self.ledger.finish()
                return
            claims = self.batch_claims(batch)
            # Wait for a free worker, for the batches running that write what this one writes, and for the
            # recording to catch up when a slow batch holds it back.
            while self.failure is None and (
                len(self._running()) >= len(workers)
                or any(_conflict(claims, other.claims) for other in self._running())
                or len(self.dispatched) >= BATCHES_AHEAD_MAX * len(workers)
            ):
                self._receive()
            if self.failure is not None:
                break
            worker = next(worker for worker in workers if worker.sequence is None)
            task = _Task(sequence, [(row.line, row.raw, row.problems) for row in batch])
            with _interrupts_deferred():  # sent whole and known as sent, or not at all
                worker.send(task)
                self.dispatched[sequence] = _Dispatched(batch, offset, line, claims, worker)
            sequence += 1
        self._drain()

    def _running(self) -> list[_Dispatched]:
        return [batch for batch in self.dispatched.values() if batch.outcome is None and batch.error is None]

    def _drain(self) -> None:
        while self._running():
            self._receive()

    def _receive(self) -> None:
        """Wait for a worker's answer, then record every batch up to the first one not committed yet."""
        running = {batch.worker.channel: batch.worker for batch in self._running()}
        for channel in multiprocessing.connection.wait(list(running)) if running else []:
            with _interrupts_deferred():  # read whole, or the next read would start inside this answer
                outcome = running[channel].answer()
            done = self.dispatched[outcome.sequence]
            if outcome.error is not None:
                done.error = outcome.error
                self.failure = self.failure or outcome.error
            else:
                done.outcome = (outcome.counts, [(done.rows[index], problems) for index, problems in outcome.rejected])
        self._record()

    def _record(self) -> None:
        while (batch := self.dispatched.get(self.recorded)) is not None and batch.outcome is not None:
            # Taken off first: an interrupt while it is recorded leaves it unrecorded, never recorded twice.
            del self.dispatched[self.recorded]
            self.recorded += 1
            counts, rejected = batch.outcome
            self.ledger.record(
                offset=batch.offset, line=batch.line, counts=counts, rejected=rejected, read=len(batch.rows)
            )


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C held back until the block ends (then raised as usual)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


# Batches done but not recorded yet (a slow one holds back those after it), at most this many a worker.
BATCHES_AHEAD_MAX = 4
# The reading process makes little cyclic garbage (rows are plain dicts): it collects every this many batches.
READER_COLLECT_BATCHES = 16


def _batch_read(rows: Iterator[tuple[SourceRow, int, int]], batch_size: int) -> tuple[list[SourceRow], int, int]:
    """Up to batch_size rows and where the last one ends in the file."""
    batch: list[SourceRow] = []
    offset = line = -1
    for row, offset, line in rows:  # noqa: B007 (the offset and line of the last row are the batch's end)
        batch.append(row)
        if len(batch) >= batch_size:
            break
    return batch, offset, line
