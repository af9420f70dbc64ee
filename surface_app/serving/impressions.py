"""Impression logging on the serving path: one script call in the user's partition counts the impressions of
the slate's items in the placement (decayed, for the click-through-rate feature) and appends the impression to
the partition's stream, from which the durable log stores it (hot path: no ORM)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import redis
from redis.exceptions import NoScriptError

from graph_app.features.definitions import CTR_HALF_LIFE_SECONDS
from personalization import redis_keys
from signals_app.online_state import PACKED_ADD_LUA

IMPRESSION_SCRIPT = (
    PACKED_ADD_LUA
    + """
-- KEYS: 1 the placement's item counters, 2 stream. ARGV: 1 ts, 2 half-life, 3 payload, 4.. item ids.
local ts, half_life = tonumber(ARGV[1]), tonumber(ARGV[2])
for index = 4, #ARGV do
  packed_add(KEYS[1], ARGV[index], ts, {0, 1}, {half_life, half_life})
end
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
return 1
"""
)


class ImpressionScript:
    def __init__(self) -> None:
        self.sha: str | None = None

    def queue(
        self,
        client: redis.Redis,
        pipeline: redis.client.Pipeline,
        *,
        user_key: str,
        placement: str,
        served_at: float,
        record: Mapping[str, object],
        item_ids: list[str],
    ) -> None:
        if self.sha is None:
            self.sha = str(client.script_load(IMPRESSION_SCRIPT))
        partition = redis_keys.partition_of(user_key)
        keys = [redis_keys.placement_counters(partition, placement), redis_keys.event_stream(partition)]
        pipeline.evalsha(
            self.sha, len(keys), *keys, repr(served_at), CTR_HALF_LIFE_SECONDS, impression_entry(record), *item_ids
        )

    def forget(self) -> None:
        """After NOSCRIPT (a Redis restart or failover): load again on the next call."""
        self.sha = None


def impression_entry(record: Mapping[str, object]) -> bytes:
    """An impression as the event stream carries it to the durable log."""
    return orjson.dumps({"kind": "impression", **record})


impression_script = ImpressionScript()
__all__ = ["NoScriptError", "impression_entry", "impression_script"]
