"""Isolation of an evaluation run from the platform's live data.

For the duration of the run, Django's default connection points at a scratch PostgreSQL database on the same
server (`<live name>_movielens`, dropped and created afresh, then migrated) and the Redis clients at another
database number of the same Redis server, flushed first. Redis pub/sub is not per database, so the channel
layer's prefix is renamed too: the catalog notifications the run's item upserts send reach no live WebSocket.
All is restored afterwards, and the scratch database is dropped unless kept. Nothing here ever writes to the live
database or the live Redis database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connection

SCRATCH_SUFFIX = "_movielens"
SCRATCH_REDIS_DB = 15
POSTGRES_NAME_MAX = 63


class ScratchError(Exception):
    """The scratch stores cannot be set up without risking live data."""


@dataclass(frozen=True)
class ScratchStores:
    database: str
    redis_url: str


def scratch_redis_url(*, live_url: str, db: int) -> str:
    parts = urlsplit(live_url)
    live_db = int(parts.path.strip("/") or 0)
    if db == live_db:
        raise ScratchError(f"Redis database {db} is the live one: choose another number")
    return urlunsplit(parts._replace(path=f"/{db}"))


def _redis_clients_forget() -> None:
    """Drop the process-wide Redis clients (and objects bound to them) so the next call connects to the current URL."""
    from graph_app import interface  # noqa: F401  (registers the model artifacts' reset)
    from personalization import redis_client
    from personalization.process_caches import process_caches_reset

    for function in (redis_client.get_redis, redis_client.get_control_redis, redis_client.get_ingest_redis):
        function.cache_clear()
    # Version names could repeat across databases.
    process_caches_reset(["graph.model_artifact_arrays"])


def _database_recreate(name: str) -> None:
    quoted = connection.ops.quote_name(name)
    # A cursor on the server's maintenance database: one cannot drop or create the database one is connected to.
    with connection._nodb_cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        cursor.execute(f"CREATE DATABASE {quoted}")


def _database_drop(name: str) -> None:
    with connection._nodb_cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {connection.ops.quote_name(name)} WITH (FORCE)")


def scratch_database_required() -> str:
    """The current database's name; raises unless it is a scratch one (guards every destructive statement)."""
    name = connection.settings_dict["NAME"]
    if not name.endswith(SCRATCH_SUFFIX):
        raise ScratchError(f"refusing to modify {name!r}: not a scratch database")
    return name


@contextlib.contextmanager
def scratch_stores(*, redis_db: int = SCRATCH_REDIS_DB, keep: bool = False) -> Iterator[ScratchStores]:
    """Point the default database connection and the Redis client at scratch stores for the block."""
    if connection.in_atomic_block:
        raise ScratchError("cannot switch databases inside a transaction")
    live_name = connection.settings_dict["NAME"]
    if live_name.endswith(SCRATCH_SUFFIX):
        raise ScratchError(f"{live_name!r} is already a scratch database")
    database = f"{live_name}{SCRATCH_SUFFIX}"
    if len(database) > POSTGRES_NAME_MAX:
        raise ScratchError(f"the scratch database name {database!r} is longer than PostgreSQL allows")
    live_redis_url = settings.REDIS_URL
    redis_url = scratch_redis_url(live_url=live_redis_url, db=redis_db)

    try:
        _database_recreate(database)
    except DatabaseError as error:
        message = f"cannot create the scratch database {database!r} (the role needs CREATEDB): {error}"
        raise ScratchError(message) from error
    connection.close()
    connection.settings_dict["NAME"] = database
    settings.REDIS_URL = redis_url
    _redis_clients_forget()
    channel_config = settings.CHANNEL_LAYERS.get("default", {}).get("CONFIG", {})
    live_prefix = channel_config.get("prefix")
    channel_config["prefix"] = f"{live_prefix or 'channels'}{SCRATCH_SUFFIX}"
    try:
        from personalization.redis_client import get_redis

        get_redis().flushdb()
        call_command("migrate", interactive=False, verbosity=0)
        yield ScratchStores(database=database, redis_url=redis_url)
    finally:
        connection.close()
        connection.settings_dict["NAME"] = live_name
        settings.REDIS_URL = live_redis_url
        if live_prefix is None:
            channel_config.pop("prefix", None)
        else:
            channel_config["prefix"] = live_prefix
        _redis_clients_forget()
        if not keep:
            _database_drop(database)
