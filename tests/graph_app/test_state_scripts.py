"""The online state's scripts (`graph_app/state/*.lua`), each against the tests' Valkey: what it writes where."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from graph_app.features.user_affinity import affinity_decode
from graph_app.state import dedupe
from graph_app.state.event_types import BUILT_IN_EVENT_TYPES
from graph_app.state.identity import _affinity_merge
from graph_app.state.impressions import impression_log_call, impression_log_queue, impression_log_script
from graph_app.state.ingest import EventOutcome, LoggedEvent, OnlineEvent, apply_script, ingest_script
from graph_app.state.online_erasure import user_state_erase
from graph_app.state.records import EventInput
from personalization import redis_keys
from personalization.redis_client import script_pipeline_execute

NOW = datetime.now(UTC)


def _event(event_id: str, kind: str, item: str, *, user: str = "u1", ago: timedelta = timedelta(0)) -> EventInput:
    return EventInput(
        event_id=event_id, type=kind, user_id=user, session_id="", item_id=item, placement="home", request_id="",
        slot=None, value=None, context={}, occurred_at=NOW - ago,
    )  # fmt: skip


def _stream(client, user: str = "u1") -> list[dict]:
    entries = client.xrange(redis_keys.event_stream(redis_keys.partition_of(user)))
    return [orjson.loads(fields[b"e"]) for _, fields in entries]


def test_dedupe_layout_script_gives_a_new_generation_one_level_and_remembers_it(clean_redis):
    layout = redis_keys.event_seen_layout(3)
    generations = dedupe.generations_at(NOW.timestamp())

    replies = dedupe.layout_script.call_named(
        clean_redis,
        layout=layout,
        ids_per_set=dedupe.IDS_PER_SET,
        max_shard_bits=dedupe.MAX_SHARD_BITS,
        now=repr(NOW.timestamp()),
        generations=list(generations.checked),
    )

    assert replies == [b"0"] * len(generations.checked)
    stored = clean_redis.hgetall(layout)
    assert {stored[f"b:{generation}".encode()] for generation in generations.checked} == {b"0"}


def test_ingest_script_applies_a_new_event_once_and_appends_it_to_the_stream(clean_redis):
    view = OnlineEvent(_event("e-1", "view", "mug"), BUILT_IN_EVENT_TYPES["view"], NOW)

    first = ingest_script.run(clean_redis, [view])
    again = ingest_script.run(clean_redis, [view])

    assert (first, again) == ([EventOutcome.NEW], [EventOutcome.DUPLICATE])
    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"mug"]
    partition = redis_keys.partition_of("u1")
    assert clean_redis.zscore(redis_keys.item_trend(partition, "1d"), "mug") is not None
    assert clean_redis.hexists(redis_keys.item_counters(partition), "mug")
    assert [(entry["event_id"], entry["kind"]) for entry in _stream(clean_redis)] == [("e-1", "event")]
    assert dedupe.event_ids_seen(clean_redis, [(partition, "e-1")], NOW.timestamp()) == [True]


def test_ingest_script_leaves_a_late_events_state_to_the_log(clean_redis):
    late = OnlineEvent(_event("old-1", "view", "mug", ago=timedelta(days=3)), BUILT_IN_EVENT_TYPES["view"], NOW)

    assert ingest_script.run(clean_redis, [late]) == [EventOutcome.NEW]

    assert clean_redis.exists(redis_keys.user_recent_items("u1")) == 0
    assert [entry["event_id"] for entry in _stream(clean_redis)] == ["old-1"]


def test_apply_script_puts_a_late_item_behind_newer_ones_without_the_stream(clean_redis):
    ingest_script.run(clean_redis, [OnlineEvent(_event("e-1", "view", "mug"), BUILT_IN_EVENT_TYPES["view"], NOW)])
    late = LoggedEvent(_event("old-1", "purchase", "hat", ago=timedelta(days=3)), BUILT_IN_EVENT_TYPES["purchase"])

    assert apply_script.run(clean_redis, [late], {}) == [True]

    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"mug", b"hat"]
    assert clean_redis.zscore(redis_keys.user_purchased("u1"), "hat") is not None
    assert [entry["event_id"] for entry in _stream(clean_redis)] == ["e-1"]


@pytest.mark.django_db  # naming the session's entities looks the catalog up (none here: they stay codes)
def test_affinity_merge_script_adds_a_sessions_entities_into_the_users_hash(clean_redis):
    partition = redis_keys.partition_of("session:s1")
    clean_redis.hset(redis_keys.catalog_entities(partition), "mug", "category:kitchen|brand:acme")
    session = OnlineEvent(
        EventInput(
            event_id="s-1", type="purchase", user_id="", session_id="s1", item_id="mug", placement="", request_id="",
            slot=None, value=None, context={}, occurred_at=NOW,
        ),
        BUILT_IN_EVENT_TYPES["purchase"],
        NOW,
    )  # fmt: skip
    ingest_script.run(clean_redis, [session])
    session_raw = clean_redis.hgetall(redis_keys.user_affinity("session:s1"))

    merged = _affinity_merge(clean_redis, user_id="u9", session=affinity_decode(session_raw))

    assert merged == 2
    user_raw = clean_redis.hgetall(redis_keys.user_affinity("u9"))
    assert {field: value for field, value in user_raw.items() if field != b"#m"} == {
        field: value for field, value in session_raw.items() if field != b"#m"
    }
    assert affinity_decode(user_raw).last == NOW.timestamp()
    assert clean_redis.ttl(redis_keys.user_affinity("u9")) > 0


def test_impressions_script_counts_each_item_shown_and_appends_the_slate_to_the_stream(clean_redis):
    call = impression_log_call(
        user_key="u1", placement="home", served_at=NOW.timestamp(), record={"request_id": "r-1"}, item_ids=["a", "b"]
    )

    script_pipeline_execute(
        clean_redis, lambda pipeline: impression_log_queue(clean_redis, pipeline, call=call), impression_log_script
    )

    counters = clean_redis.hgetall(redis_keys.placement_counters(redis_keys.partition_of("u1"), "home"))
    assert set(counters) == {b"a", b"b"}
    clicks, impressions, last = struct.unpack("<ddd", counters[b"a"])
    assert (clicks, impressions, last) == (0.0, 1.0, NOW.timestamp())
    assert _stream(clean_redis) == [{"kind": "impression", "request_id": "r-1"}]


def test_online_erase_script_deletes_the_keys_and_entries_and_sets_the_tombstone(clean_redis):
    ingest_script.run(clean_redis, [OnlineEvent(_event("e-1", "view", "mug"), BUILT_IN_EVENT_TYPES["view"], NOW)])
    stream = redis_keys.event_stream(redis_keys.partition_of("u1"))
    [(entry_id, _)] = clean_redis.xrange(stream)

    erased, entries = user_state_erase(
        client=clean_redis,
        user_key="u1",
        keys=[redis_keys.user_recent_items("u1"), redis_keys.user_affinity("u1")],
        stream_entries=[entry_id],
        tombstone="erased:{u1}",
        tombstone_ttl=60,
    )

    assert (erased, entries) == (2, 1)  # the recent items, the affinity hash (its latest item of interest)
    assert clean_redis.exists(redis_keys.user_recent_items("u1")) == 0
    assert clean_redis.xlen(stream) == 0
    assert clean_redis.get("erased:{u1}") == entry_id
    assert 0 < clean_redis.ttl("erased:{u1}") <= 60
