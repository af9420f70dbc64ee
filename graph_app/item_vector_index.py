"""The items' HNSW vector index, dropped for a bulk load and built again after it (pgvector's own advice).

Each new item's vector inserted into the HNSW graph costs about a millisecond (BENCHMARKS.md, "Catalog writes in
bulk"), a million items a quarter of an hour; building the graph once over the loaded rows is several times
faster. While the index is away, vector searches are exact (a sequential scan): right, only slower. The build is
`CREATE INDEX CONCURRENTLY` (writes and reads go on) with the index's own definition (`Item.Meta.indexes`), more
memory for the graph (`maintenance_work_mem`) and one parallel worker on top of the leader.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO

from django.db import DatabaseError, connection, connections

from graph_app.models import Item

INDEX_NAME = "item_embedding_hnsw"
# The graph of a million 64-dimension vectors (m 16) takes about 0.8 GB; a graph larger than this memory is
# still built, more slowly (pgvector warns).
BUILD_MEMORY = "2GB"
BUILD_WORKERS = 1
PROGRESS_SECONDS = 10.0


# How long a process trusts its last look at whether the index is there (serving asks on every vector search).
SERVING_CHECK_SECONDS = 5.0
_serving_checked: tuple[float, bool] = (-SERVING_CHECK_SECONDS, True)


class VectorIndexRebuilding(DatabaseError):
    """The HNSW index is being rebuilt: a vector search now would scan every item's vector."""


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


def item_vector_index_serving_forget() -> None:
    """Look again at the next call (after this process dropped or built the index, and in tests)."""
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
    (index,) = [index for index in Item._meta.indexes if index.name == INDEX_NAME]
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
    try:
        with connection.schema_editor(atomic=False) as editor:
            editor.add_index(Item, index, concurrently=not connection.in_atomic_block)  # type: ignore[call-arg]
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
        progress.write(f"HNSW index: {vectors:,} vectors in {seconds:.0f} s.\n")
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
            write(f"HNSW index: {phase}, {inserted:,}/{vectors:,} vectors after {elapsed:.0f} s{left}\n")
    finally:
        connections["default"].close()
