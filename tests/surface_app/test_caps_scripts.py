"""The caps' scripts (`surface_app/serving/caps_enforce*.lua`), each against the tests' Valkey: what they record
and refuse, and the slate's impressions the enforce-and-log script logs in the same call."""

from __future__ import annotations

import orjson

from graph_app.state.interface import impression_log_call
from personalization import redis_keys
from personalization.redis_client import get_redis, script_pipeline_execute
from surface_app.serving.caps import (
    CapItem,
    CapSpec,
    caps_enforce_and_record,
    caps_enforce_queue,
    caps_refused,
    enforce_and_log_script,
)

NOW = 1_800_000_000.0
ONE_A_DAY = CapSpec(scope="item", max_impressions=1, window_seconds=86_400, name="once a day")


def test_caps_enforce_script_records_what_it_accepts_and_refuses_what_is_over_its_cap(clean_redis):
    items = [CapItem("mug"), CapItem("hat")]

    first = caps_enforce_and_record(
        user_key="u1", placement="home", request_id="r1", items=items, specs=[ONE_A_DAY], now=NOW
    )
    second = caps_enforce_and_record(
        user_key="u1", placement="home", request_id="r2", items=items, specs=[ONE_A_DAY], now=NOW + 60
    )

    assert (first, second) == ([], ["mug", "hat"])
    assert set(clean_redis.hkeys(redis_keys.user_cap_counts("u1"))) == {b"i:mug", b"i:hat"}
    assert clean_redis.zscore(redis_keys.user_cap_touched("u1"), "i:mug") == NOW
    assert len(clean_redis.hkeys(redis_keys.user_cap_blocks("u1"))) == 2  # both blocked until their window ends


def test_caps_enforce_and_log_script_logs_the_slate_only_when_it_refused_nothing(clean_redis):
    client = get_redis()

    def enforce(request_id: str, now: float) -> list[str]:
        impression = impression_log_call(
            user_key="u1", placement="home", served_at=now, record={"request_id": request_id}, item_ids=["mug"]
        )

        def queue(pipeline) -> None:
            caps_enforce_queue(
                pipeline, user_key="u1", placement="home", request_id=request_id, items=[CapItem("mug")],
                specs=[ONE_A_DAY], now=now, limit=1, retention_seconds=None, impression=impression,
            )  # fmt: skip

        reply = script_pipeline_execute(client, queue, enforce_and_log_script)[-1]
        return caps_refused(reply, user_key="u1", placement="home", request_id=request_id)

    assert enforce("r1", NOW) == []
    assert enforce("r2", NOW + 60) == ["mug"]

    stream = redis_keys.event_stream(redis_keys.partition_of("u1"))
    assert [orjson.loads(fields[b"e"]) for _, fields in clean_redis.xrange(stream)] == [
        {"kind": "impression", "request_id": "r1"}
    ]
    counters = redis_keys.placement_counters(redis_keys.partition_of("u1"), "home")
    assert clean_redis.hkeys(counters) == [b"mug"]
