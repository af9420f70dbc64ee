"""Impression logging on the serving path: one script call in the user's partition counts the impressions of
the slate's items in the placement (decayed, for the click-through-rate feature) and appends the impression to
the partition's stream, from which the durable log stores it (hot path: no ORM)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import redis

from graph_app.features.definitions import CTR_HALF_LIFE_SECONDS
from personalization import redis_keys
from personalization.redis_client import ShaScript

# The Lua that logs a slate's impressions (`log_impressions`), for a script of another owner that logs them in the
# same call (the caps' enforce script): fragments to put before that script's own files.
IMPRESSION_LOG_LUA_FILES = (Path(__file__).with_name("packed_add.lua"), Path(__file__).with_name("impression_log.lua"))
impression_log_script = ShaScript.from_files(__file__, *IMPRESSION_LOG_LUA_FILES, "impressions.lua")
_IMPRESSION = impression_log_script.record("IMPRESSION")


class ImpressionLogCall(NamedTuple):
    """What logs a slate's impressions: the placement's item counters and the event stream (`keys`), and the
    IMPRESSION record's arguments (`args`, impression_log.lua), for `impression_log_script` or a script that
    composes IMPRESSION_LOG_LUA_FILES."""

    keys: list[str]
    args: list[Any]


def impression_log_call(
    *, user_key: str, placement: str, served_at: float, record: Mapping[str, object], item_ids: list[str]
) -> ImpressionLogCall:
    """The keys and arguments of a slate's impression log in the user's partition: the time, the click-through
    half-life, the stream entry, the items shown."""
    partition = redis_keys.partition_of(user_key)
    keys = [redis_keys.placement_counters(partition, placement), redis_keys.event_stream(partition)]
    entry = orjson.dumps({"kind": "impression", **record})
    args = _IMPRESSION.values(ts=repr(served_at), half_life=CTR_HALF_LIFE_SECONDS, payload=entry, items=item_ids)
    return ImpressionLogCall(keys, args)


def impression_log_queue(client: redis.Redis, pipeline: redis.client.Pipeline, *, call: ImpressionLogCall) -> None:
    """Queue the impression log on the caller's pipeline (run it with `script_pipeline_execute(...,
    impression_log_script)`)."""
    counters, stream = call.keys
    impression_log_script.queue_named(client, pipeline, counters=counters, stream=stream, impression=call.args)
