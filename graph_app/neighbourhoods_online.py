"""Reading items' one-hop neighbourhoods from Redis (hot path: plain Python, no ORM).

`graph_app.neighbourhoods` publishes one key per item (`redis_keys.item_neighbours`) holding an orjson array:
`[item title, [[neighbour id, score, "e", "kind:id", entity name] or [neighbour id, score, "c"], ...]]`, best
first. The title is stored once per item: it is what every co-occurrence explanation names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from personalization import redis_keys
from personalization.redis_client import get_redis

SOURCE_ENTITY = "entity"
SOURCE_CO_OCCURRENCE = "co-occurrence"
_SOURCE_CODES = {"e": SOURCE_ENTITY, "c": SOURCE_CO_OCCURRENCE}


@dataclass(frozen=True)
class Neighbour:
    item_id: str
    score: float
    source: str
    # "kind:id" of the strongest shared entity, or "co-occurrence".
    via: str
    # The entity's name, or for co-occurrence the title of the item whose neighbour this is.
    via_name: str


def neighbours_encode(*, title: str, neighbours: Sequence[Neighbour]) -> bytes:
    entries: list[list[object]] = []
    for neighbour in neighbours:
        entry: list[object] = [neighbour.item_id, round(neighbour.score, 6)]
        if neighbour.source == SOURCE_ENTITY:
            entry += ["e", neighbour.via, neighbour.via_name]
        else:
            entry.append("c")
        entries.append(entry)
    return orjson.dumps([title, entries])


def neighbours_decode_one(payload: bytes | None) -> list[Neighbour]:
    if not payload:
        return []
    title, entries = orjson.loads(payload)
    neighbours: list[Neighbour] = []
    for entry in entries:
        source = _SOURCE_CODES[entry[2]]
        if source == SOURCE_ENTITY:
            neighbours.append(Neighbour(entry[0], float(entry[1]), source, entry[3], entry[4]))
        else:
            neighbours.append(Neighbour(entry[0], float(entry[1]), source, SOURCE_CO_OCCURRENCE, title))
    return neighbours


def neighbours_queue(pipeline: redis.client.Pipeline, item_ids: Sequence[str]) -> int:
    """Queue the reads of these items' neighbourhoods on the caller's pipeline; returns how many replies they take."""
    for item_id in item_ids:
        pipeline.get(redis_keys.item_neighbours(item_id))
    return len(item_ids)


def neighbours_decode(replies: Sequence[Any], *, item_ids: Sequence[str]) -> dict[str, list[Neighbour]]:
    """The replies of `neighbours_queue` (in the same order): item id -> neighbours, best first ([] if none)."""
    return {item_id: neighbours_decode_one(reply) for item_id, reply in zip(item_ids, replies, strict=True)}


def item_neighbours(item_ids: Sequence[str], *, client: redis.Redis | None = None) -> dict[str, list[Neighbour]]:
    """One round trip for the neighbourhoods of these items."""
    pipeline = (client or get_redis()).pipeline(transaction=False)
    neighbours_queue(pipeline, item_ids)
    return neighbours_decode(pipeline.execute(), item_ids=item_ids)


def neighbour_explanation(neighbour: Neighbour) -> str:
    """Why a neighbour is recommended, in a few words a shopper can read."""
    if neighbour.source == SOURCE_ENTITY:
        name = neighbour.via_name or neighbour.via.partition(":")[2]
        return f"Because you like {name}"
    return f"Often bought with {neighbour.via_name}" if neighbour.via_name else "Often bought together"
