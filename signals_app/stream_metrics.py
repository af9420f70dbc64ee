"""Stream length and consumer lag, read from Redis when Prometheus scrapes (not kept in process memory)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.consumer import CONSUMER_GROUP


class EventStreamCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        length = GaugeMetricFamily("signals_stream_length", "Entries in the event stream.", labels=["partition"])
        lag = GaugeMetricFamily(
            "signals_consumer_lag", "Entries not yet read by the durable-log consumers.", labels=["partition"]
        )
        pending = GaugeMetricFamily(
            "signals_consumer_pending", "Entries read but not yet acknowledged.", labels=["partition"]
        )
        dead = GaugeMetricFamily("signals_dead_letters", "Entries in the dead-letter stream.", labels=["partition"])
        try:
            pipeline = get_redis().pipeline(transaction=False)
            for partition in redis_keys.partitions():
                pipeline.xlen(redis_keys.event_stream(partition))
                pipeline.xlen(redis_keys.dead_letter_stream(partition))
            counts = pipeline.execute()
            for partition in redis_keys.partitions():
                label = [str(partition)]
                length.add_metric(label, counts[2 * partition])
                dead.add_metric(label, counts[2 * partition + 1])
                groups = _groups(redis_keys.event_stream(partition))
                group = groups.get(CONSUMER_GROUP)
                lag.add_metric(label, float(group.get("lag") or 0) if group else counts[2 * partition])
                pending.add_metric(label, float(group.get("pending") or 0) if group else 0)
        except RedisError:
            return  # the scrape still shows everything else; readyz reports Redis
        yield from (length, lag, pending, dead)


def _groups(stream: str) -> dict[str, dict[str, object]]:
    try:
        rows = get_redis().xinfo_groups(stream)
    except RedisError:
        return {}
    return {(row["name"].decode() if isinstance(row["name"], bytes) else row["name"]): row for row in rows}
