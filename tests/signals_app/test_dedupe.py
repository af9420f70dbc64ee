"""The ingest script's dedupe (`graph_app.state.dedupe`): 64-bit hashes of event ids in intsets, by arrival day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from redis.crc import key_slot

from graph_app.state import dedupe
from graph_app.state.dedupe import DEDUPE_WINDOW, GENERATION_SECONDS, IDS_PER_SET, event_ids_seen, generations_at
from graph_app.state.ingest import SCRIPT_CALL_EVENTS, EventOutcome, ingest_script
from personalization import redis_keys
from signals_app.services import IngestReport, events_validate

pytestmark = pytest.mark.django_db

NEW, DUPLICATE = EventOutcome.NEW, EventOutcome.DUPLICATE
# A day boundary of the generations (UTC midnight). The tests' arrivals are days ahead: Redis expires the sets by
# its own clock, so a set of a day past would go at once.
MIDNIGHT = datetime.fromtimestamp(
    (datetime.now(UTC).timestamp() // GENERATION_SECONDS + 3) * GENERATION_SECONDS, tz=UTC
)


def send(client, event_ids: list[str], *, at: datetime, happened: datetime | None = None, user: str = "u1"):
    """The events arrive at `at` (they happened at `happened`, by default when they arrive)."""
    raw = [
        {"event_id": event_id, "type": "view", "user_id": user, "item_id": "mug",
         "timestamp": (happened or at).isoformat()}
        for event_id in event_ids
    ]  # fmt: skip
    valid = events_validate(raw_events=raw, report=IngestReport(), now=at)
    assert len(valid.events) == len(event_ids)
    return ingest_script.run(client, valid.events)


def seen_keys(client) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter("seen:*", count=1000))


def test_a_resend_in_the_same_generation_is_a_duplicate_and_a_new_event_is_new(clean_redis):
    at = MIDNIGHT + timedelta(hours=2)
    assert send(clean_redis, ["e1", "e2"], at=at) == [NEW, NEW]

    assert send(clean_redis, ["e2", "e3", "e1"], at=at + timedelta(hours=5)) == [DUPLICATE, NEW, DUPLICATE]
    assert clean_redis.xlen(redis_keys.event_stream(redis_keys.partition_of("u1"))) == 3


def test_a_resend_after_the_day_turned_is_a_duplicate(clean_redis):
    first = MIDNIGHT - timedelta(seconds=1)
    assert send(clean_redis, ["late-evening"], at=first) == [NEW]

    after = MIDNIGHT + timedelta(seconds=1)
    assert generations_at(after.timestamp()).current != generations_at(first.timestamp()).current
    assert send(clean_redis, ["late-evening"], at=after, happened=first) == [DUPLICATE]


@pytest.mark.parametrize("first_offset", [timedelta(0), timedelta(hours=23, minutes=59, seconds=59)])
def test_an_event_first_seen_just_inside_the_window_is_still_a_duplicate(clean_redis, first_offset):
    """Arrived at a day's start or its end: a resend 48 h less a second later is dropped (the generation it went to
    is still checked), whatever day that falls on."""
    first = MIDNIGHT - timedelta(days=2) + first_offset
    assert send(clean_redis, ["edge"], at=first) == [NEW]

    resend = first + DEDUPE_WINDOW - timedelta(seconds=1)
    assert send(clean_redis, ["edge"], at=resend, happened=first) == [DUPLICATE]
    # The sets outlive the window: Redis expires them by their day, at least 48 h after its end.
    for key in seen_keys(clean_redis):
        if key != redis_keys.event_seen_layout(redis_keys.partition_of("u1")):
            assert clean_redis.expiretime(key) >= first.timestamp() + DEDUPE_WINDOW.total_seconds()


def test_thousands_of_new_events_are_never_dropped_and_their_resends_always_are(clean_redis):
    at = MIDNIGHT + timedelta(hours=1)
    first = [f"id-{n}" for n in range(3000)]
    assert send(clean_redis, first, at=at) == [NEW] * 3000

    others = [f"other-{n}" for n in range(3000)]
    assert send(clean_redis, others, at=at + timedelta(minutes=1)) == [NEW] * 3000
    assert send(clean_redis, first[::7] + others[::11], at=at + timedelta(hours=30)) == [DUPLICATE] * (
        len(first[::7]) + len(others[::11])
    )
    assert event_ids_seen(
        clean_redis,
        [(redis_keys.partition_of("u1"), "id-5"), (redis_keys.partition_of("u1"), "never")],
        (at + timedelta(hours=30)).timestamp(),
    ) == [
        True,
        False,
    ]


def test_the_sets_are_intsets_of_a_few_hundred_ids_and_a_busy_day_adds_a_level(clean_redis):
    """A generation starts with one set; once it holds IDS_PER_SET ids, the ids that follow go to a level of more
    sets, sized by the rate (here thousands within a minute: a busy day)."""
    at = MIDNIGHT + timedelta(hours=12)
    ids = [f"busy-{n}" for n in range(4000)]
    for start in range(0, len(ids), 500):
        send(clean_redis, ids[start : start + 500], at=at)
    day = generations_at(at.timestamp()).current

    levels = (
        clean_redis.hget(redis_keys.event_seen_layout(redis_keys.partition_of("u1")), f"b:{day}").decode().split(",")
    )
    assert levels[0] == "0" and len(levels) == 2 and int(levels[1]) >= 4
    sets = [key for key in seen_keys(clean_redis) if key != redis_keys.event_seen_layout(redis_keys.partition_of("u1"))]
    sizes = {key: clean_redis.scard(key) for key in sets}
    assert sum(sizes.values()) == 4000
    # Growth follows a script call (SCRIPT_CALL_EVENTS): the one that took the first set past IDS_PER_SET.
    first_set = redis_keys.event_seen(redis_keys.partition_of("u1"), f"{day}.0", 0)
    assert sizes[first_set] == 6 * SCRIPT_CALL_EVENTS > IDS_PER_SET
    assert len(sets) <= 1 + 2 ** int(levels[1])
    assert {clean_redis.object("encoding", key) for key in sets} == {b"intset"}
    assert max(sizes.values()) <= 512
    assert int(clean_redis.hget(redis_keys.event_seen_layout(redis_keys.partition_of("u1")), f"n:{day}")) == 4000

    # The next day starts with enough sets for this one: a single level.
    tomorrow = at + timedelta(days=1)
    assert send(clean_redis, ["tomorrow-1"], at=tomorrow) == [NEW]
    assert (
        clean_redis.hget(redis_keys.event_seen_layout(redis_keys.partition_of("u1")), f"b:{day + 1}") == b"4"
    )  # 4000 / 256 <= 2^4


def test_every_key_a_call_touches_is_in_its_partitions_slot(clean_redis, settings):
    settings.EVENT_PARTITIONS = 4
    users = [f"slot-user-{n}" for n in range(40)]
    assert {redis_keys.partition_of(user) for user in users} == {0, 1, 2, 3}
    at = MIDNIGHT + timedelta(hours=3)
    for user in users:
        send(clean_redis, [f"{user}-a", f"{user}-b"], at=at, user=user)

    slots = {partition: key_slot(redis_keys.event_stream(partition).encode()) for partition in range(4)}
    keys = seen_keys(clean_redis)
    assert len(keys) >= 8  # sets and a layout in each partition
    for key in keys:
        partition = int(key.split("{p", 1)[1].split("}", 1)[0])
        assert key_slot(key.encode()) == slots[partition]


def test_a_call_with_an_old_layout_is_refused_before_it_writes_and_sent_again(clean_redis):
    """Another process added a level: this one's call carries the old layout, the script writes nothing and says
    so, and the call goes again with the stored layout (the id is found in the level it was added to)."""
    at = MIDNIGHT + timedelta(hours=4)
    assert send(clean_redis, ["before"], at=at) == [NEW]
    day = generations_at(at.timestamp()).current
    clean_redis.hset(
        redis_keys.event_seen_layout(redis_keys.partition_of("u1")), f"b:{day}", "0,3"
    )  # as another process's growth would

    assert send(clean_redis, ["before", "after"], at=at) == [DUPLICATE, NEW]
    assert dedupe.layouts.of(redis_keys.partition_of("u1"), generations_at(at.timestamp())).current_levels == "0,3"
    assert clean_redis.xlen(redis_keys.event_stream(redis_keys.partition_of("u1"))) == 2


def test_an_arrival_checks_the_days_of_the_window_and_the_clock_skew():
    day = int(MIDNIGHT.timestamp()) // GENERATION_SECONDS
    noon = generations_at(MIDNIGHT.timestamp() + GENERATION_SECONDS / 2)
    assert (noon.current, noon.checked) == (day, (day, day - 1, day - 2))
    # Within the skew of midnight: the day before the window's start, or the next day, is checked too.
    after_midnight = generations_at(MIDNIGHT.timestamp() + 60)
    assert (after_midnight.current, after_midnight.checked) == (day, (day, day - 1, day - 2, day - 3))
    before_midnight = generations_at(MIDNIGHT.timestamp() - 60)
    assert (before_midnight.current, before_midnight.checked) == (day - 1, (day, day - 1, day - 2, day - 3))
    assert noon.expire_at == (day + 1) * GENERATION_SECONDS + DEDUPE_WINDOW.total_seconds() + 600


def test_an_import_with_an_old_layout_is_sent_again_and_skips_what_ingest_saw(clean_redis):
    """The apply script (imports within the window) checks the same sets: a call made with a layout another process
    has grown since is refused and sent again; an event ingest saw is skipped, a new one applied and remembered."""
    from graph_app.state.history import events_apply_online
    from graph_app.state.records import EventRecord
    from signals_app.validation import event_validate

    now = datetime.now(UTC)
    assert send(clean_redis, ["live-1"], at=now) == [NEW]
    day = generations_at(now.timestamp()).current
    layout = redis_keys.event_seen_layout(redis_keys.partition_of("u1"))
    clean_redis.hset(layout, f"b:{day}", clean_redis.hget(layout, f"b:{day}").decode() + ",2")

    records = [
        EventRecord(event=event_validate({"event_id": event_id, "type": "view", "user_id": "u1", "item_id": "mug",
                                          "timestamp": now.isoformat()}, now=now), received_at=now)
        for event_id in ("live-1", "imported-1")
    ]  # fmt: skip
    applied = events_apply_online(records=records, dedupe_after=now - DEDUPE_WINDOW)

    assert applied == 1
    assert len(clean_redis.keys(f"seen:*:{day}.1:*")) == 1  # added to the level the stored layout has
    assert send(clean_redis, ["imported-1", "live-1"], at=now) == [DUPLICATE, DUPLICATE]
