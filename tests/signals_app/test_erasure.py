"""The Signal layer's side of erasure (`signals_app.erasure`): what a consumer read before a shopper was erased is
dropped when it stores it, and what arrives after the erasure is stored."""

from __future__ import annotations

import pytest

from graph_app.models import Shopper
from graph_app.state.models import Event
from operations.erasure import shopper_erase
from personalization import redis_keys
from signals_app import consumer
from signals_app.models import IdentityLink
from signals_app.services import events_ingest

pytestmark = pytest.mark.django_db


def _read_by_a_slow_consumer(clean_redis) -> list:
    """The stream's new entries, read (pending) by a consumer that has not stored them yet."""
    stream = redis_keys.event_stream(0)
    consumer._group_ensure(stream)
    return clean_redis.xreadgroup(consumer.CONSUMER_GROUP, "slow", {stream: ">"})[0][1]


def test_entries_read_before_the_erasure_are_dropped_when_stored_and_later_ones_are_stored(clean_redis, settings):
    settings.EVENT_PARTITIONS = 1  # one stream for the slow consumer to read
    events_ingest(raw_events=[
        {"event_id": "gone-1", "type": "view", "user_id": "gone", "session_id": "s-gone", "item_id": "mug"},
        {"event_id": "gone-2", "type": "view", "session_id": "s-gone", "item_id": "cup"},
        {"event_id": "stays-1", "type": "view", "user_id": "stays", "item_id": "mug"},
    ])  # fmt: skip
    in_flight = _read_by_a_slow_consumer(clean_redis)
    assert len(in_flight) == 4  # three events and the session's link

    erased = shopper_erase(user_id="gone")
    report = consumer.DrainReport()
    consumer._process(redis_keys.event_stream(0), 0, in_flight, report, reclaimed=False)

    assert (erased.stream_entries, erased.sessions) == (3, 1)
    assert (report.erased, report.stored, report.identities) == (3, 1, 0)
    assert list(Event.objects.values_list("event_id", flat=True)) == ["stays-1"]
    assert not IdentityLink.objects.exists()
    assert list(Shopper.objects.values_list("external_id", flat=True)) == ["stays"]
    assert clean_redis.xpending(redis_keys.event_stream(0), consumer.CONSUMER_GROUP)["pending"] == 0

    events_ingest(raw_events=[{"event_id": "gone-3", "type": "view", "user_id": "gone", "item_id": "bag"}])
    later = consumer.events_drain_all()

    assert (later.stored, later.erased) == (1, 0)
    assert Event.objects.filter(user_id="gone").count() == 1
    assert clean_redis.lrange(redis_keys.user_recent_items("gone"), 0, -1) == [b"bag"]


def test_a_resend_of_an_erased_event_within_the_window_does_not_start_its_history_again(clean_redis):
    """The tombstone covers what was in flight at the erasure; a resend after it is kept out by the dedupe, which
    remembers the event id only as a 64-bit hash: nothing in Redis names the shopper or the event."""
    sent = {"event_id": "gone-1", "type": "view", "user_id": "gone", "item_id": "mug"}
    events_ingest(raw_events=[sent])
    consumer.events_drain_all()
    shopper_erase(user_id="gone")

    report = events_ingest(raw_events=[sent])
    consumer.events_drain_all()

    assert (report.accepted, report.duplicates) == (0, 1)
    assert not Event.objects.filter(user_id="gone").exists()
    assert not clean_redis.exists(redis_keys.user_recent_items("gone"))
    assert [key for key in clean_redis.scan_iter(count=1000) if b"gone" in key] == []
    assert clean_redis.keys("seen:*")  # the dedupe's sets are still there
