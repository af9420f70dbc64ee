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
from collections.abc import Callable
from typing import Any, ClassVar

import hiredis
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import NoScriptError
from redis.retry import Retry

HOT_PATH_SOCKET_TIMEOUT_SECONDS = 0.05
HOT_PATH_CONNECT_TIMEOUT_SECONDS = 0.05
CONTROL_SOCKET_TIMEOUT_SECONDS = 5.0
CONTROL_CONNECT_TIMEOUT_SECONDS = 1.0


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


@functools.cache
def get_redis() -> redis.Redis:
    """The hot path's client (REDIS_HOT_PATH_TIMEOUT_SECONDS, 50 ms in production)."""
    timeout = settings.REDIS_HOT_PATH_TIMEOUT_SECONDS
    return redis_client_for(settings.REDIS_URL, socket_timeout=timeout, connect_timeout=timeout)


@functools.cache
def get_ingest_redis() -> redis.Redis:
    """Event ingest's client: the hot path's with a longer socket timeout (REDIS_INGEST_SOCKET_TIMEOUT_SECONDS, 2 s).
    A batch's script calls take milliseconds of Redis time, but on a loaded machine (load average 8-13 on 2 cores)
    Redis waits for a core, and the 50 ms timeout cut 1 batch in 9 short after its events were applied. Storefronts
    send events in the background: they can wait."""
    return redis_client_for(settings.REDIS_URL, socket_timeout=settings.REDIS_INGEST_SOCKET_TIMEOUT_SECONDS)


@functools.cache
def get_control_redis() -> redis.Redis:
    """The control plane's client (longer timeouts)."""
    return redis_client_for(
        settings.REDIS_URL,
        socket_timeout=CONTROL_SOCKET_TIMEOUT_SECONDS,
        connect_timeout=CONTROL_CONNECT_TIMEOUT_SECONDS,
    )


def swap_in(client: redis.Redis, *, key: str, staging: str) -> None:
    """Make `staging` (`redis_keys.staging` of `key`) the value of `key`, atomically: a reader sees the old value or
    the new one, never a mix. The old value (tens of MB for a list per item) is freed in the background (UNLINK),
    where a RENAME over it would free it in Redis's one thread. A missing `staging` removes `key`."""
    retired = f"{staging}:retired"
    swap = client.pipeline(transaction=True)
    swap.rename(key, retired)  # fails harmlessly when nothing is served yet
    swap.rename(staging, key)  # fails harmlessly when the build wrote nothing
    swap.execute(raise_on_error=False)
    client.unlink(retired, staging)


class ShaScript:
    """A Lua script sent by its SHA (EVALSHA carries the hash, not the source), loaded on first use and again after
    a Redis restart or failover forgot it (NOSCRIPT: nothing of that call ran)."""

    _every: ClassVar[list[ShaScript]] = []

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha: str | None = None
        ShaScript._every.append(self)  # scripts are module constants: the list does not grow with use

    def _loaded(self, client: redis.Redis) -> str:
        if self.sha is None:
            self.sha = str(client.script_load(self.source))
        return self.sha

    def call(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        for attempt in range(2):
            try:
                return client.evalsha(self._loaded(client), len(keys), *keys, *args)
            except NoScriptError:
                self.sha = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def queue(self, client: redis.Redis, pipeline: redis.client.Pipeline, keys: list[str], args: list[Any]) -> None:
        pipeline.evalsha(self._loaded(client), len(keys), *keys, *args)

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
