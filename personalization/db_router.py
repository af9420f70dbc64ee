"""Reads that tolerate lag go to a streaming replica; everything else stays on the primary.

Outside `lag_tolerant_reads()` every read and write goes to "default", so a request or task reads what it wrote.
Inside it, reads go to a healthy replica alias (replica_0, replica_1... from DATABASE_REPLICA_URLS), round robin;
writes still go to the primary, and so does a read inside a transaction on the primary (it must see its own
uncommitted rows). A replica is healthy when a probe, cached per process for DATABASE_REPLICA_HEALTH_CACHE_SECONDS,
connects within DATABASE_REPLICA_CONNECT_TIMEOUT_SECONDS and finds it caught up or behind by less than
DATABASE_REPLICA_MAX_LAG_SECONDS. A function decorated with `lag_tolerant_reads()` whose replica fails mid-call is
run again on the primary: decorate the entry function of a read (a selector, a build, a training read), not a view.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from prometheus_client import Counter

from personalization.process_caches import process_cache

logger = logging.getLogger(__name__)

REPLICA_PREFIX = "replica_"

REPLICA_FALLBACKS = Counter(
    "database_replica_fallbacks_total",
    "Lag-tolerant reads served by the primary: no healthy replica when routed (unhealthy), or a replica that failed"
    " mid-call, whose call was run again on the primary (error).",
    ["reason"],
)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _Scope:
    replicas_used: set[str] = field(default_factory=set)


_scope: ContextVar[_Scope | None] = ContextVar("lag_tolerant_reads", default=None)


@dataclass(frozen=True)
class ReplicaHealth:
    healthy: bool
    lag_seconds: float | None
    checked_at: float


_health: dict[str, ReplicaHealth] = {}
_health_lock = threading.Lock()
_round_robin = itertools.count()

# Caught up means streaming and everything received is replayed: on an idle primary the last replayed transaction
# grows old without any lag. Otherwise the lag is the age of the last replayed transaction. A server that is not in
# recovery is a primary (the URL names one, or the replica was promoted): its reads are current.
_PROBE_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0.0
    WHEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')
         AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
    ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8
END
"""


class lag_tolerant_reads:
    """Send the reads inside to a healthy replica: a context manager, or a decorator that also falls back.

    A database error inside marks unhealthy the replicas it used whose connection failed (or that fail a fresh
    probe); the decorated function is then run once more, on another healthy replica or the primary."""

    def __init__(self) -> None:
        self._entered: list[tuple[Token[_Scope | None], _Scope]] = []

    def __enter__(self) -> None:
        # Nested scopes share the outermost one's record of the replicas used.
        scope = _scope.get() or _Scope()
        self._entered.append((_scope.set(scope), scope))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        token, scope = self._entered.pop()
        _scope.reset(token)
        if isinstance(exc, OperationalError) and not hasattr(exc, "replica_failed"):
            exc.replica_failed = _failed_replicas(scope.replicas_used)  # type: ignore[attr-defined]

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                with lag_tolerant_reads():
                    return function(*args, **kwargs)
            except OperationalError as error:
                if not getattr(error, "replica_failed", False):
                    raise
                REPLICA_FALLBACKS.labels(reason="error").inc()
                logger.warning("database.replica_fallback", extra={"function": function.__qualname__})
                with lag_tolerant_reads():
                    return function(*args, **kwargs)

        return run


class ReplicaRouter:
    """settings.DATABASE_ROUTERS: the primary for writes, migrations and reads outside `lag_tolerant_reads()`."""

    def db_for_read(self, model: type[Any], **hints: Any) -> str:
        return read_alias()

    def db_for_write(self, model: type[Any], **hints: Any) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        # Replicas hold the primary's rows: an object read from one may relate to an object of the other.
        databases = {obj1._state.db, obj2._state.db}
        if all(alias == DEFAULT_DB_ALIAS or str(alias).startswith(REPLICA_PREFIX) for alias in databases):
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        return db == DEFAULT_DB_ALIAS


def read_alias() -> str:
    """The database alias a read goes to now: a healthy replica inside `lag_tolerant_reads()`, else the primary."""
    scope = _scope.get()
    if scope is None or connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return DEFAULT_DB_ALIAS
    replicas = replica_aliases()
    if not replicas:
        return DEFAULT_DB_ALIAS
    healthy = [alias for alias in replicas if _health_of(alias).healthy]
    if not healthy:
        REPLICA_FALLBACKS.labels(reason="unhealthy").inc()
        return DEFAULT_DB_ALIAS
    alias = healthy[next(_round_robin) % len(healthy)]
    scope.replicas_used.add(alias)
    return alias


def read_connection() -> BaseDatabaseWrapper:
    """The connection for a raw SQL read (`with read_connection().cursor() as cursor`), routed as the ORM's are."""
    return connections[read_alias()]


def replica_aliases() -> list[str]:
    return sorted(alias for alias in settings.DATABASES if alias.startswith(REPLICA_PREFIX))


def replica_health(alias: str) -> ReplicaHealth:
    """The replica's health as this process last probed it (probing again once the cached answer is too old)."""
    return _health_of(alias)


def _health_of(alias: str) -> ReplicaHealth:
    now = time.monotonic()
    known = _health.get(alias)
    if known is not None and now - known.checked_at < settings.DATABASE_REPLICA_HEALTH_CACHE_SECONDS:
        return known
    with _health_lock:
        # One probe per process at a time: threads that waited take its answer.
        known = _health.get(alias)
        if known is not None and time.monotonic() - known.checked_at < settings.DATABASE_REPLICA_HEALTH_CACHE_SECONDS:
            return known
        _health[alias] = health = _probe(alias)
        return health


def _probe(alias: str) -> ReplicaHealth:
    params = connections[alias].get_connection_params()
    params["connect_timeout"] = settings.DATABASE_REPLICA_CONNECT_TIMEOUT_SECONDS
    params.pop("cursor_factory", None)  # Django's cursor class: a plain one does here
    try:
        with psycopg.connect(**params, autocommit=True) as probe:
            row = probe.execute(_PROBE_SQL).fetchone()
    except psycopg.Error as error:
        logger.warning("database.replica_unreachable", extra={"alias": alias, "error": str(error)})
        return ReplicaHealth(healthy=False, lag_seconds=None, checked_at=time.monotonic())
    lag = None if row is None or row[0] is None else float(row[0])
    healthy = lag is not None and lag <= settings.DATABASE_REPLICA_MAX_LAG_SECONDS
    if not healthy:
        logger.warning("database.replica_lagging", extra={"alias": alias, "lag_seconds": lag})
    return ReplicaHealth(healthy=healthy, lag_seconds=lag, checked_at=time.monotonic())


def _failed_replicas(used: set[str]) -> bool:
    """Mark unhealthy the replicas a failed call used whose connection saw an error or that fail a probe now; they
    leave `used`, so that an outer scope does not count them again."""
    failed = [alias for alias in sorted(used) if connections[alias].errors_occurred or not _probe(alias).healthy]
    for alias in failed:
        used.discard(alias)
        with _health_lock:
            _health[alias] = ReplicaHealth(healthy=False, lag_seconds=None, checked_at=time.monotonic())
        connection = connections[alias]
        try:
            connection.close()
        except Exception:  # closing a broken connection may fail again; it is gone either way
            logger.debug("database.replica_close_failed", extra={"alias": alias})
        connection.errors_occurred = False  # the next connection starts clean
    return bool(failed)


@process_cache("database.replica_health")
def replica_health_reset() -> None:
    with _health_lock:
        _health.clear()
