"""Impression logging on the serving path: one script call in the user's partition counts the impressions of
the slate's items in the placement (decayed, for the click-through-rate feature) and appends the impression to
the partition's stream, from which the durable log stores it (hot path: no ORM)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
import redis

from graph_app.features.definitions import CTR_HALF_LIFE_SECONDS
from graph_app.state.ingest import PACKED_ADD_LUA
from personalization import redis_keys
from personalization.redis_client import ShaScript

# Counts a slate's impressions in the placement (decayed, for the click-through rate) and appends the impression to
# the stream. ARGV from `at` on: what `impression_call` gives after the keys.
IMPRESSION_LOG_LUA = (
    PACKED_ADD_LUA
    + """
local function log_impressions(counters, stream, at)
  local ts, half_life = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  for index = at + 3, #ARGV do
    packed_add(counters, ARGV[index], ts, {0, 1}, {half_life, half_life})
  end
  redis.call('XADD', stream, '*', 'e', ARGV[at + 2])
end
"""
)
IMPRESSION_SCRIPT = (
    IMPRESSION_LOG_LUA
    + """
-- KEYS: 1 the placement's item counters, 2 stream. ARGV: 1 ts, 2 half-life, 3 payload, 4.. item ids.
log_impressions(KEYS[1], KEYS[2], 1)
return 1
"""
)
impression_log_script = ShaScript(IMPRESSION_SCRIPT)


class ImpressionLogCall(NamedTuple):
    """The keys and arguments that log a slate's impressions (`impression_log_script`, or the caps' enforce script
    that composes IMPRESSION_LOG_LUA)."""

    keys: list[str]
    args: list[Any]


def impression_log_call(
    *, user_key: str, placement: str, served_at: float, record: Mapping[str, object], item_ids: list[str]
) -> ImpressionLogCall:
    """The keys and arguments of an impression's logging (`impression_script`, and the enforce script that logs it
    too, `surface_app.serving.caps`): the user's partition's counters of the placement and event stream; the time,
    the click-through half-life, the stream entry, the items shown."""
    partition = redis_keys.partition_of(user_key)
    keys = [redis_keys.placement_counters(partition, placement), redis_keys.event_stream(partition)]
    entry = orjson.dumps({"kind": "impression", **record})
    return ImpressionLogCall(keys, [repr(served_at), CTR_HALF_LIFE_SECONDS, entry, *item_ids])


def impression_log_queue(client: redis.Redis, pipeline: redis.client.Pipeline, *, call: ImpressionLogCall) -> None:
    """Queue the impression log on the caller's pipeline (run it with `script_pipeline_execute(...,
    impression_log_script)`)."""
    impression_log_script.queue(client, pipeline, call.keys, call.args)
