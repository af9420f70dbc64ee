"""Live updates: a layer tells whoever listens that users' state or the catalog changed, without importing them.

Graph (catalog writes, erasure) and Signal (events, identify, Segment) publish; Surface subscribes in its
`AppConfig.ready()` and pushes the open shelves (`surface_app.services`). Delivery is synchronous, in the
publisher's thread and in subscription order, exactly as the direct calls it replaces: the publisher's timing (after
its commit, or queued on its own Redis pipeline) is the notification's timing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import redis


@dataclass(frozen=True, slots=True)
class UsersChanged:
    """These users' events, traits or identity changed. With a pipeline, subscribers only queue their commands on
    it (the ingest's own pipeline, which the publisher executes): the notification costs no round trip."""

    user_keys: frozenset[str]
    pipeline: redis.client.Pipeline | None = None


@dataclass(frozen=True, slots=True)
class CatalogChanged:
    """Items were updated or deleted (`changed`), or created or back in stock (`appeared`). Published after commit."""

    changed: frozenset[str] = frozenset()
    appeared: frozenset[str] = frozenset()


Message = UsersChanged | CatalogChanged
M = TypeVar("M", UsersChanged, CatalogChanged)

# Filled once per process by the subscribers' `ready()`: not a cache, nothing to reset between tests.
_handlers: dict[type[Message], list[Callable[[Message], None]]] = {UsersChanged: [], CatalogChanged: []}


def subscribe(topic: type[M], handler: Callable[[M], None]) -> None:
    """Call `handler` with every message of this topic (once, however often the same handler subscribes)."""
    handlers = _handlers[topic]
    if handler not in handlers:
        handlers.append(handler)  # type: ignore[arg-type]  # keyed by its own topic


def publish(message: Message) -> None:
    """Deliver now; inside `catalog_batch()` catalog changes are collected and delivered as one when it ends."""
    if isinstance(message, CatalogChanged):
        if not (message.changed or message.appeared):
            return
        batch = _catalog_batch.get()
        if batch is not None:
            batch.changed |= message.changed
            batch.appeared |= message.appeared
            return
    for handler in _handlers[type(message)]:
        handler(message)


def users_changed(*, user_keys: Iterable[str], pipeline: redis.client.Pipeline | None = None) -> None:
    user_keys = frozenset(user_keys)
    if user_keys:
        publish(UsersChanged(user_keys=user_keys, pipeline=pipeline))


def users_changed_queue(pipeline: redis.client.Pipeline, user_keys: Iterable[str]) -> None:
    """`users_changed` in the shape of ingest's `on_users_changed` hook (queued on its pipeline)."""
    users_changed(user_keys=user_keys, pipeline=pipeline)


def catalog_changed(*, changed: Iterable[str] = (), appeared: Iterable[str] = ()) -> None:
    publish(CatalogChanged(changed=frozenset(changed), appeared=frozenset(appeared)))


@dataclass
class _CatalogChanges:
    changed: set[str] = field(default_factory=set)
    appeared: set[str] = field(default_factory=set)


_catalog_batch: contextvars.ContextVar[_CatalogChanges | None] = contextvars.ContextVar(
    "live_updates_catalog_batch", default=None
)


@contextmanager
def catalog_batch() -> Iterator[None]:
    """Coalesce the catalog changes published inside (a batch upsert of 1,000 items) into one message at the end."""
    if _catalog_batch.get() is not None:  # nested: the outer batch sends
        yield
        return
    batch = _CatalogChanges()
    token = _catalog_batch.set(batch)
    try:
        yield
    finally:
        _catalog_batch.reset(token)
        # Also after an error: what committed before it must reach the shelves.
        catalog_changed(changed=batch.changed, appeared=batch.appeared)
