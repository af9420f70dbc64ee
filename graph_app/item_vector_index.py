"""The items' vector index (IVFFlat: inverted lists around k-means centres), dropped for a bulk load or new vectors
and built again after them (pgvector's own advice).

Its lists are centred on the vectors there when it is built: a first catalog load, or a training that replaced
every vector, leaves them off-centre, so both drop the index and build it again over the new rows, with as many
lists as the catalog's size asks for (`ivfflat_lists`). While the index is away, vector searches would be exact (a
sequential scan): serving skips them (`item_vector_index_serving`). The build is `CREATE INDEX CONCURRENTLY`
(writes and reads go on), with more memory (`maintenance_work_mem`) and one parallel worker on top of the leader:
about a minute for a million 64-dimension vectors.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import IO

from django.db import DatabaseError, connection, connections

from personalization.process_caches import process_cache

INDEX_NAME = "item_embedding_ivfflat"
# k-means over a sample of the vectors (50 a list) is held in this memory: 806 MB for 2,000 lists of 64 dimensions.
BUILD_MEMORY = "2GB"
# Lists past this would need more memory than BUILD_MEMORY (a catalog of four million items and more).
MAX_LISTS = 4000
BUILD_WORKERS = 1
PROGRESS_SECONDS = 10.0


# How long a process trusts its last look at whether the index is there (serving asks on every vector search).
SERVING_CHECK_SECONDS = 5.0
_serving_checked: tuple[float, bool] = (-SERVING_CHECK_SECONDS, True)


class VectorIndexRebuilding(DatabaseError):
    """The vector index is being rebuilt: a vector search now would scan every item's vector."""


def ivfflat_lists(rows: int) -> int:
    """Lists for `rows` vectors: twice the square root (2,000 at a million), where pgvector suggests rows / 1,000 up
    to a million. Shoppers' vectors are far from the items' own; with lists of 500 vectors, searching 60 of them
    (`settings.IVFFLAT_PROBES`) found recall@10 0.95 at a million items in 7 to 9 ms. The migration that created
    the index applies the same rule. At most MAX_LISTS."""
    return min(MAX_LISTS, max(1, round(2 * math.sqrt(rows))))


def item_vector_index_serving() -> bool:
    """Whether vector searches can use the index, as this process last saw it (at most SERVING_CHECK_SECONDS
    ago). While a bulk load or a training rebuilds it, a search is an exact scan of every vector (about a second
    at a million items, in parallel workers): serving's searches piled up and held both cores, and every
    recommendation waited seconds (BENCHMARKS.md, "Training at 1 M items"). Serving skips them meanwhile."""
    global _serving_checked
    checked_at, present = _serving_checked
    now = time.monotonic()
    if now - checked_at >= SERVING_CHECK_SECONDS:
        present = item_vector_index_present()
        _serving_checked = (now, present)
    return present


@process_cache("graph.vector_index_serving")
def _serving_check_forget() -> None:
    """Look again at the next call."""
    global _serving_checked
    _serving_checked = (-SERVING_CHECK_SECONDS, True)


def item_vector_index_present() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid WHERE c.relname = %s",
            [INDEX_NAME],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def item_vector_index_drop() -> None:
    """Drop the index, valid or left invalid by a failed build: concurrently (serving's reads are not blocked)
    unless the caller holds a transaction open, where PostgreSQL allows only the plain statement."""
    concurrently = "" if connection.in_atomic_block else "CONCURRENTLY "
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX {concurrently}IF EXISTS {INDEX_NAME}")


def item_vector_index_build(*, progress: IO[str] | None = None) -> float:
    """Build the index if it is missing (or invalid); returns the seconds it took (0 when it was there).
    With `progress`, a line every PROGRESS_SECONDS: vectors inserted and the time left at the rate so far."""
    if item_vector_index_present():
        return 0.0
    item_vector_index_drop()  # an invalid one, left by an interrupted build
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM graph_app_item WHERE embedding IS NOT NULL")
        (vectors,) = cursor.fetchone()
        # Session settings of this connection only; the build may take minutes (no statement timeout).
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [BUILD_MEMORY])
        cursor.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", [str(BUILD_WORKERS)])
        cursor.execute("SELECT set_config('statement_timeout', '0', false)")
    done = threading.Event()
    reporter = None
    if progress is not None:
        reporter = threading.Thread(target=_progress_report, args=(done, vectors, progress.write), daemon=True)
        reporter.start()
    started = time.monotonic()
    concurrently = "" if connection.in_atomic_block else "CONCURRENTLY "
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE INDEX {concurrently}{INDEX_NAME} ON graph_app_item "
                f"USING ivfflat (embedding vector_cosine_ops) WITH (lists = {ivfflat_lists(vectors)})"
            )
    finally:
        done.set()
        if reporter is not None:
            reporter.join()
        if not connection.needs_rollback:
            with connection.cursor() as cursor:
                for name in ("maintenance_work_mem", "max_parallel_maintenance_workers", "statement_timeout"):
                    cursor.execute(f"RESET {name}")
    seconds = time.monotonic() - started
    if progress is not None:
        progress.write(f"Vector index: {vectors:,} vectors in {seconds:.0f} s.\n")
    return seconds


def _progress_report(done: threading.Event, vectors: int, write: Callable[[str], object]) -> None:
    """From its own connection: the build's progress (pg_stat_progress_create_index) and its time left."""
    started = time.monotonic()
    try:
        while not done.wait(PROGRESS_SECONDS):
            with connections["default"].cursor() as cursor:
                cursor.execute(
                    "SELECT p.phase, p.tuples_done FROM pg_stat_progress_create_index AS p "
                    "JOIN pg_class AS c ON c.oid = p.relid WHERE c.relname = 'graph_app_item'"
                )
                row = cursor.fetchone()
            if row is None:
                continue
            phase, inserted = row
            elapsed = time.monotonic() - started
            left = f", about {elapsed / inserted * (vectors - inserted):.0f} s left" if inserted else ""
            write(f"Vector index: {phase}, {inserted:,}/{vectors:,} vectors after {elapsed:.0f} s{left}\n")
    finally:
        connections["default"].close()
