"""The process-wide Redis clients: one for the hot path, one for the control plane.

Hot path (ingest, state and feature reads, serving): short timeouts and no retry of a timeout, so that a Redis
that does not answer turns into a 503 or a degraded answer within 100 ms, never a hang (redis-py's default
retries with backoff for seconds). A dropped connection (e.g. after a Redis restart) is retried once at once.
Control plane (the event-log consumer, training, catalog and neighbourhood publishing, test set-up): longer
timeouts, since its commands may move thousands of entries and nobody waits on them interactively.
Keys are built in `personalization.redis_keys` with hash tags so that one user's keys share a Redis Cluster slot.
"""

from __future__ import annotations

import functools
import keyword
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeAlias, cast

import hiredis
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import HiredisRespSerializer
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, NoScriptError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.retry import Retry

HOT_PATH_SOCKET_TIMEOUT_SECONDS = 0.05
HOT_PATH_CONNECT_TIMEOUT_SECONDS = 0.05
CONTROL_SOCKET_TIMEOUT_SECONDS = 5.0
CONTROL_CONNECT_TIMEOUT_SECONDS = 1.0
# Ingest and the control plane wait this long for a failed master's replica to take over (Redis Cluster mode).
CLUSTER_FAILOVER_WAIT_SECONDS = 5.0

# The platform's annotations name the single-node client; in Redis Cluster mode the object is a RedisCluster, whose
# commands and pipelines mirror it (redis-py gives the two no common base class to name instead).
RedisClient: TypeAlias = redis.Redis


class CommandPacker(HiredisRespSerializer):
    """redis-py's hiredis packer without its Python pass over every argument (it converts memoryviews, which
    hiredis packs itself): a feature read sends 500 item ids in each of several commands, and that pass cost
    more than the rest of the packing. Anything hiredis refuses goes through redis-py's own packer."""

    def pack(self, *args: Any) -> list[bytes]:
        command = args[0]
        if isinstance(command, str):
            args = (*command.encode().split(), *args[1:])
        elif b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return list(super().pack(*args))  # raises redis-py's DataError naming the value


_COMMAND_PACKER = CommandPacker()


def redis_client_for(
    url: str,
    *,
    socket_timeout: float = HOT_PATH_SOCKET_TIMEOUT_SECONDS,
    connect_timeout: float = HOT_PATH_CONNECT_TIMEOUT_SECONDS,
) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        # Only a connection error is retried: retrying a timeout would double the wait on a hung Redis.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=30,
        command_packer=_COMMAND_PACKER,
    )


class _PackedConnection(redis.Connection):
    """A cluster node's connection with our packer: RedisCluster drops `command_packer` from the arguments it hands
    its nodes (redis.cluster.REDIS_ALLOWED_KEYS), but passes `connection_class` on to their pools."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(command_packer=_COMMAND_PACKER, **kwargs)  # type: ignore[no-untyped-call]


# A failover: the dead master refuses connections, then the cluster is down for its slots until the replica is
# elected (about 1-3 s with cluster-node-timeout 1000). A timeout is not among them: the command may have run.
_FAILOVER_ERRORS = (redis.ConnectionError, ClusterDownError, SlotNotCoveredError, TryAgainError)
_FAILOVER_PAUSE_SECONDS = 0.1


class PatientRedisCluster(RedisCluster):
    """A cluster client whose single commands wait through a master's failover, up to `failover_seconds`, instead
    of failing on the first refused connection (redis-py's own retries follow one another at once). Pipelines keep
    redis-py's immediate retries: a failed one raises, and its caller answers as for any Redis error."""

    def __init__(self, *args: Any, failover_seconds: float = 0.0, **kwargs: Any) -> None:
        self.failover_seconds = failover_seconds  # before redis-py's constructor, which sends commands
        super().__init__(*args, **kwargs)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.failover_seconds
        while True:
            try:
                return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
            except _FAILOVER_ERRORS:
                if time.monotonic() + _FAILOVER_PAUSE_SECONDS > deadline:
                    raise
                time.sleep(_FAILOVER_PAUSE_SECONDS)


def redis_cluster_client_for(
    nodes: list[str],
    *,
    socket_timeout: float = HOT_PATH_SOCKET_TIMEOUT_SECONDS,
    connect_timeout: float = HOT_PATH_CONNECT_TIMEOUT_SECONDS,
    failover_seconds: float = 0.0,
) -> RedisClient:
    """A client of the Redis Cluster at `nodes` ("host:port"), typed as the single-node client it mirrors (the same
    commands and pipelines; redis-py gives the two no common base). `failover_seconds` 0: no retry at all, so that a
    dead master costs the hot path one refused connection, never more than its timeout."""
    addresses = [node.rsplit(":", 1) for node in nodes[1:]]
    startup = [ClusterNode(host, int(port)) for host, port in addresses]  # type: ignore[no-untyped-call]
    try:
        client = PatientRedisCluster(
            # Given a URL, redis-py builds each node's client from a connection pool, which takes `connection_class`.
            url=f"redis://{nodes[0]}",
            startup_nodes=startup,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 3 if failover_seconds else 0),
            connection_class=_PackedConnection,
            failover_seconds=failover_seconds,
        )
    except RedisClusterException as error:
        # No node answered: callers handle Redis being away as a RedisError (a degraded answer, a 503); the getters'
        # cache keeps no client, so the next call tries again.
        raise redis.ConnectionError(str(error)) from error
    return cast(RedisClient, client)


def cluster_mode() -> bool:
    return bool(settings.REDIS_CLUSTER_NODES)


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


def connection_pools(client: RedisClient) -> list[Any]:
    """The client's connection pools: its one, or on a cluster one per node it knows."""
    if not is_cluster(client):
        return [client.connection_pool]
    nodes = cast(RedisCluster, client).get_nodes()  # type: ignore[no-untyped-call]
    return [node.redis_connection.connection_pool for node in nodes if node.redis_connection is not None]


def _master_of(client: RedisClient, key: str) -> Any:
    """The cluster node serving `key`'s slot, as the client's slot table has it."""
    return cast(RedisCluster, client).get_node_from_key(key)  # type: ignore[no-untyped-call]


@dataclass
class ReplicasWait:
    """WAIT on a pipeline: after its writes, each master it wrote to (named by a key of its slots) answers once
    `replicas` of its replicas acknowledged them, or after `timeout_ms`. A write acknowledged before a master dies
    could otherwise be lost with it (replication is asynchronous). `short` counts the masters whose replicas fell
    short. WAIT counts the writes of its own connection: it must go on the pipeline that wrote."""

    replicas: int
    timeout_ms: int
    short: int = 0

    def queue(self, client: RedisClient, pipeline: redis.client.Pipeline, keys: Iterable[str]) -> int:
        """Queue one WAIT per master of `keys` (a Redis Cluster client's pipeline); returns how many."""
        if not is_cluster(client):
            return 0  # one server: no replica is asked for
        nodes = {node.name: node for node in (_master_of(client, key) for key in keys)}
        for node in nodes.values():
            pipeline.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)  # type: ignore[no-untyped-call]
        return len(nodes)

    def count(self, replies: list[Any]) -> None:
        self.short += sum(1 for reply in replies if not isinstance(reply, int) or reply < self.replicas)


@functools.cache
def get_redis() -> RedisClient:
    """The hot path's client (REDIS_HOT_PATH_TIMEOUT_SECONDS, 50 ms in production)."""
    timeout = settings.REDIS_HOT_PATH_TIMEOUT_SECONDS
    if cluster_mode():
        return redis_cluster_client_for(settings.REDIS_CLUSTER_NODES, socket_timeout=timeout, connect_timeout=timeout)
    return redis_client_for(settings.REDIS_URL, socket_timeout=timeout, connect_timeout=timeout)


@functools.cache
def get_ingest_redis() -> RedisClient:
    """Event ingest's client: the hot path's with a longer socket timeout (REDIS_INGEST_SOCKET_TIMEOUT_SECONDS, 2 s).
    A batch's script calls take milliseconds of Redis time, but on a loaded machine (load average 8-13 on 2 cores)
    Redis waits for a core, and the 50 ms timeout cut 1 batch in 9 short after its events were applied. Storefronts
    send events in the background: they can wait."""
    if cluster_mode():
        return redis_cluster_client_for(
            settings.REDIS_CLUSTER_NODES,
            socket_timeout=settings.REDIS_INGEST_SOCKET_TIMEOUT_SECONDS,
            failover_seconds=CLUSTER_FAILOVER_WAIT_SECONDS,
        )
    return redis_client_for(settings.REDIS_URL, socket_timeout=settings.REDIS_INGEST_SOCKET_TIMEOUT_SECONDS)


@functools.cache
def get_control_redis() -> RedisClient:
    """The control plane's client (longer timeouts)."""
    if cluster_mode():
        return redis_cluster_client_for(
            settings.REDIS_CLUSTER_NODES,
            socket_timeout=CONTROL_SOCKET_TIMEOUT_SECONDS,
            connect_timeout=CONTROL_CONNECT_TIMEOUT_SECONDS,
            failover_seconds=CLUSTER_FAILOVER_WAIT_SECONDS,
        )
    return redis_client_for(
        settings.REDIS_URL,
        socket_timeout=CONTROL_SOCKET_TIMEOUT_SECONDS,
        connect_timeout=CONTROL_CONNECT_TIMEOUT_SECONDS,
    )


def delete_queue(pipeline: redis.client.Pipeline, *keys: str) -> None:
    """Queue one DEL of `keys`, which must share a Redis Cluster slot (a hash tag): as a plain command, since a
    cluster pipeline refuses its `delete` method for several keys."""
    pipeline.execute_command("DEL", *keys)  # type: ignore[no-untyped-call]


def swap_in(client: redis.Redis, *, key: str, staging: str) -> None:
    """Make `staging` (`redis_keys.staging` of `key`) the value of `key`, atomically: a reader sees the old value or
    the new one, never a mix. The old value (tens of MB for a list per item) is freed in the background (UNLINK),
    where a RENAME over it would free it in Redis's one thread. A missing `staging` removes `key`."""
    retired = f"{staging}:retired"
    if key_slot(key.encode()) != key_slot(staging.encode()):
        # A transaction on a Redis Cluster must stay in one slot: `staging` keeps the hash tag of `key`.
        raise ValueError(f"{staging!r} is not in the Redis Cluster slot of {key!r}: give {key!r} a hash tag")
    swap = client.pipeline(transaction=True)
    # As plain commands: a cluster pipeline refuses its `rename` method, though a transaction in one slot may RENAME.
    swap.execute_command("RENAME", key, retired)  # type: ignore[no-untyped-call]  # fails harmlessly when nothing is served yet
    swap.execute_command("RENAME", staging, key)  # type: ignore[no-untyped-call]  # fails harmlessly when the build wrote nothing
    swap.execute(raise_on_error=False)
    client.unlink(retired, staging)


# A script's interface, read from its `.lua` files: "--! KEYS: a b c...", "--! ARGV: ...", "--! RECORD NAME: ..."
# (a group of arguments repeated per element). A name ending in "..." takes the rest (a list). In the Lua,
# `{{KEYS.a}}` and `{{ARGV.a}}` are a name's position, `{{NAME.f}}` a record field's (from 1: `ARGV[at + {{NAME.f}}]`
# with `at` just before the record), `{{NAME}}` a record's fixed length or a constant the loader is given.
_SIGNATURE = re.compile(r"^--!\s*(KEYS|ARGV|RECORD\s+(\w+))\s*:(.*)$", re.M)
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)(?:\.(\w+))?\s*\}\}")


def _packer(groups: list[tuple[tuple[str, ...], str | None]]) -> Callable[..., Any]:
    """A function of keyword-only arguments (these names) that returns each group's values as a list, in order (a
    group's `rest` name spread at its end); Python itself refuses a missing or unknown name, at the cost of a call."""
    names = [name for fields, rest in groups for name in (*fields, *([rest] if rest else []))]
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"{name!r} cannot name a script's argument")
    lists = [
        "[" + "".join(f"{name}, " for name in fields) + (f"*{rest}" if rest else "") + "]" for fields, rest in groups
    ]
    packed = lists[0] if len(lists) == 1 else "(" + ", ".join(lists) + ")"
    packer: Callable[..., Any] = eval(f"lambda *, {', '.join(names)}: {packed}" if names else f"lambda: {packed}")
    return packer


@dataclass(frozen=True)
class LuaRecord:
    """Arguments repeated per element (an event, an item) in a declared order. `values(**named)` gives them in the
    script's order and refuses a missing or unknown name."""

    name: str
    fields: tuple[str, ...]
    rest: str | None = None  # a last field that takes a list
    values: Callable[..., list[Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _packer([(self.fields, self.rest)]))

    def offset(self, name: str) -> int:
        if name == self.rest:
            return len(self.fields) + 1
        return self.fields.index(name) + 1


def _record_of(name: str, text: str) -> LuaRecord:
    names = text.split()
    rest = names.pop()[:-3] if names and names[-1].endswith("...") else None
    if any(name.endswith("...") for name in names):
        raise ValueError(f"{name}: only the last name may take the rest")
    if len(set(names) | ({rest} if rest else set())) != len(names) + (rest is not None):
        raise ValueError(f"{name}: a name declared twice")
    return LuaRecord(name, tuple(names), rest)


def lua_source(
    anchor: str, *files: str | Path, constants: Mapping[str, object] | None = None
) -> tuple[str, dict[str, LuaRecord]]:
    """The Lua of `files` (names beside the module `anchor`, its `__file__`, or paths) joined in order, its
    placeholders filled in, and the KEYS, ARGV and records it declares (a declaration may go on over several
    lines). Refuses a placeholder it cannot fill."""
    folder = Path(anchor).parent
    text = "".join((folder / name).read_text(encoding="utf-8") for name in files)
    declared: dict[str, list[str]] = {}
    for match in _SIGNATURE.finditer(text):
        declared.setdefault(match.group(2) or match.group(1), []).append(match.group(3))
    records = {name: _record_of(name, " ".join(parts)) for name, parts in declared.items()}
    known = dict(constants or {})

    def fill(match: re.Match[str]) -> str:
        name, field = match.group(1), match.group(2)
        if field is None and name in known:
            return str(known[name])
        if field is None and name in records:
            return str(len(records[name].fields))
        if field is not None and name in records:
            record = records[name]
            if field in record.fields or field == record.rest:
                return str(record.offset(field))
        raise ValueError(f"{[str(name) for name in files]}: nothing fills {match.group(0)}")

    return _PLACEHOLDER.sub(fill, text), records


class ShaScript:
    """A Lua script sent by its SHA (EVALSHA carries the hash, not the source), loaded on first use and again after
    a Redis restart or failover forgot it (NOSCRIPT: nothing of that call ran).

    Made from `.lua` files (`from_files`), it knows the names of its KEYS and ARGV: `arguments(**named)` builds both
    lists and refuses a missing or unknown name."""

    _every: ClassVar[list[ShaScript]] = []

    def __init__(self, source: str, records: Mapping[str, LuaRecord] | None = None) -> None:
        self.source = source
        self.sha: str | None = None
        self.records = dict(records or {})
        self._keys = self.records.get("KEYS", LuaRecord("KEYS", ()))
        self._args = self.records.get("ARGV", LuaRecord("ARGV", ()))
        names = [*self._keys.fields, *self._args.fields, *(r.rest for r in (self._keys, self._args) if r.rest)]
        if len(set(names)) != len(names):
            raise ValueError("a name is both a key and an argument")
        self._pack = _packer([(self._keys.fields, self._keys.rest), (self._args.fields, self._args.rest)])
        ShaScript._every.append(self)  # scripts are module constants: the list does not grow with use

    @classmethod
    def from_files(cls, anchor: str, *files: str | Path, constants: Mapping[str, object] | None = None) -> ShaScript:
        """The script of these `.lua` files (beside the module `anchor`, or paths; fragments first, the script
        last)."""
        return cls(*lua_source(anchor, *files, constants=constants))

    def record(self, name: str) -> LuaRecord:
        return self.records[name]

    def arguments(self, **named: Any) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV by the names the script declares (a name taking the rest gets a list); refuses a missing or
        unknown name."""
        keys, args = self._pack(**named)
        return keys, args

    def loaded(self, client: redis.Redis) -> str:
        if self.sha is None:
            self.sha = str(client.script_load(self.source))
        return self.sha

    def call(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        for attempt in range(2):
            try:
                return client.evalsha(self.loaded(client), len(keys), *keys, *args)
            except NoScriptError:
                self.sha = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def queue(self, client: redis.Redis, pipeline: redis.client.Pipeline, keys: list[str], args: list[Any]) -> None:
        # As a plain command: a cluster pipeline refuses its `evalsha` method. Routed to the master of its keys (one
        # slot) here: left to itself, a cluster pipeline asks its default node for the keys of every EVALSHA
        # (COMMAND GETKEYS, a round trip each), and fails for good once that node is dead.
        options = {"target_nodes": _master_of(client, keys[0])} if keys and is_cluster(client) else {}
        pipeline.execute_command("EVALSHA", self.loaded(client), len(keys), *keys, *args, **options)  # type: ignore[no-untyped-call]

    def call_named(self, client: redis.Redis, **named: Any) -> Any:
        return self.call(client, *self.arguments(**named))

    def queue_named(self, client: redis.Redis, pipeline: redis.client.Pipeline, **named: Any) -> None:
        self.queue(client, pipeline, *self.arguments(**named))

    def forget(self) -> None:
        self.sha = None

    @classmethod
    def forget_all(cls) -> None:
        """After a NOSCRIPT in a pipeline of several scripts: Redis forgot them all (a restart, a failover)."""
        for script in cls._every:
            script.forget()


def script_pipeline_execute(
    client: redis.Redis, queue: Callable[[redis.client.Pipeline], None], script: ShaScript
) -> list[Any]:
    """A pipeline that `queue` fills (calling `script` among other commands), executed; sent once more when Redis
    had forgotten the script, which then ran nothing (the other commands must bear running twice). Raises
    RedisError."""
    for attempt in range(2):
        pipeline = client.pipeline(transaction=False)
        queue(pipeline)
        try:
            return pipeline.execute()
        except NoScriptError:
            script.forget()
            if attempt:
                raise
    raise AssertionError("unreachable")
