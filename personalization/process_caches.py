"""The caches a process keeps in its own memory, registered in one place.

A module that keeps one registers the function that empties it under a name, with the decorator below. Tests empty
every registered cache between tests with one call (their Redis and database are emptied too, so nothing a cache
remembers may survive a test); a newcomer finds every such cache by reading the registry's names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

Reset = TypeVar("Reset", bound=Callable[[], object])

_resets: dict[str, Callable[[], object]] = {}


def process_cache(name: str) -> Callable[[Reset], Reset]:
    """Register the decorated no-argument function as the one that empties the cache `name`."""

    def register(reset: Reset) -> Reset:
        known = _resets.get(name)
        if known is not None and known is not reset and _qualified(known) != _qualified(reset):
            raise ValueError(f"Two process caches are named {name!r}: {_qualified(known)} and {_qualified(reset)}")
        _resets[name] = reset
        return reset

    return register


def process_caches_reset(names: Iterable[str] | None = None) -> None:
    """Empty the caches named (all registered ones by default)."""
    for name in _resets if names is None else names:
        _resets[name]()


def process_cache_names() -> tuple[str, ...]:
    return tuple(sorted(_resets))


def _qualified(function: Callable[[], object]) -> str:
    # A module imported twice (as a script and as a module) registers the same function again: not a clash.
    return f"{function.__module__}.{function.__qualname__}"
