from __future__ import annotations

import orjson
import pytest

from graph_app.state.models import BanditDecision, Event, Impression
from personalization import redis_keys
from signals_app.consumer import CONSUMER_GROUP, MAX_TRIES, events_drain, events_drain_all
from signals_app.models import DeadLetter
from signals_app.services import events_ingest
from tests.signals_app.helpers import stream_lengths

pytestmark = pytest.mark.django_db


def view(event_id: str, user_id: str = "u1"):
    return {"event_id": event_id, "type": "view", "user_id": user_id, "item_id": "sku-1"}


def _stream_of(user_key: str) -> tuple[int, str]:
    partition = redis_keys.partition_of(user_key)
    return partition, redis_keys.event_stream(partition)


def test_unreadable_and_unstorable_entries_are_dead_lettered_without_blocking_others(clean_redis):
    events_ingest(raw_events=[view("good-1"), view("good-2")])
    partition, stream = _stream_of("u1")
    good_payload = orjson.loads(clean_redis.xrange(stream)[0][1][b"e"])
    clean_redis.xadd(stream, {"e": b"{not json"})
    clean_redis.xadd(stream, {"e": orjson.dumps({**good_payload, "event_id": "too-long-user", "user_id": "u" * 300})})

    report = events_drain(partition=partition, consumer="test")

    assert (report.read, report.stored, report.dead_lettered) == (4, 2, 2)
    assert set(Event.objects.values_list("event_id", flat=True)) == {"good-1", "good-2"}
    dead = {row.error.split(":")[0] for row in DeadLetter.objects.all()}
    assert dead == {"unreadable entry", "could not be stored"}
    assert clean_redis.xlen(redis_keys.dead_letter_stream(partition)) == 2
    assert clean_redis.xpending(stream, CONSUMER_GROUP)["pending"] == 0


def _impression(request_id: str, **overrides):
    record = {
        "kind": "impression",
        "request_id": request_id,
        "user_key": "u1",
        "placement": "home",
        "model_version": "ranker-v1",
        "served_at": 1_760_000_000.0,
        "items": [{"item_id": "sku-1", "slot": 0, "score": 0.9, "source": "bandit", "propensity": 0.25,
                   "features": "|i sku-1"}],
        "bandit": {"shared": "|u u1", "unshown": [["sku-2", "|i sku-2"]]},
    }  # fmt: skip
    return orjson.dumps({**record, **overrides})


def test_a_malformed_record_is_dead_lettered_alone_and_the_rest_of_its_batch_is_stored(clean_redis):
    events_ingest(raw_events=[view("good-1")])
    partition, stream = _stream_of("u1")
    malformed = _impression("r-bad")
    malformed = orjson.dumps({key: value for key, value in orjson.loads(malformed).items() if key != "user_key"})
    clean_redis.xadd(stream, {"e": malformed})
    clean_redis.xadd(stream, {"e": _impression("r-good")})
    events_ingest(raw_events=[view("good-2")])

    report = events_drain(partition=partition, consumer="test")

    assert (report.read, report.stored, report.impressions, report.dead_lettered) == (4, 2, 1, 1)
    assert set(Event.objects.values_list("event_id", flat=True)) == {"good-1", "good-2"}
    assert list(Impression.objects.values_list("request_id", "item_id", "propensity")) == [("r-good", "sku-1", 0.25)]
    decision = BanditDecision.objects.get()
    assert (decision.request_id, decision.actions) == ("r-good", [["sku-1", "|i sku-1"], ["sku-2", "|i sku-2"]])
    dead = DeadLetter.objects.get()
    assert dead.error.startswith("could not be processed: KeyError('user_key')")
    assert orjson.loads(dead.payload)["request_id"] == "r-bad"
    assert clean_redis.xlen(redis_keys.dead_letter_stream(partition)) == 1
    assert clean_redis.xpending(stream, CONSUMER_GROUP)["pending"] == 0


def test_entries_of_a_dead_consumer_are_reclaimed(clean_redis, settings):
    events_ingest(raw_events=[view(f"r{n}") for n in range(5)])
    partition, stream = _stream_of("u1")
    clean_redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    clean_redis.xreadgroup(CONSUMER_GROUP, "crashed-worker", {stream: ">"}, count=100)  # read, never acknowledged
    settings.EVENT_RECLAIM_IDLE_MS = 0

    report = events_drain(partition=partition, consumer="survivor")

    assert (report.reclaimed, report.stored) == (5, 5)
    assert Event.objects.count() == 5
    assert clean_redis.xpending(stream, CONSUMER_GROUP)["pending"] == 0


def _consumer_dies_inside_each_try(monkeypatch) -> list[int]:
    """Storing kills the consumer (a BaseException, as a poison entry that crashes the process): the try was made,
    the entries stay pending. Returns the list each try appends to."""
    from signals_app import consumer

    tries: list[int] = []

    def dies(*, records):
        if not records:
            return set()
        tries.append(len(records))
        raise SystemExit("killed while storing")

    monkeypatch.setattr(consumer, "event_log_append", dies)
    return tries


def test_an_entry_is_dead_lettered_after_max_tries_actually_made(clean_redis, settings, monkeypatch):
    events_ingest(raw_events=[view("poison")])
    partition, _stream = _stream_of("u1")
    settings.EVENT_RECLAIM_IDLE_MS = 0
    tries = _consumer_dies_inside_each_try(monkeypatch)
    for _ in range(MAX_TRIES):
        with pytest.raises(SystemExit):
            events_drain(partition=partition, consumer="crashing")

    report = events_drain(partition=partition, consumer="survivor")

    assert len(tries) == MAX_TRIES  # every try was made; the one after them was not
    assert report.dead_lettered == 1
    dead = DeadLetter.objects.get()
    assert (dead.deliveries, dead.error) == (MAX_TRIES, f"tried {MAX_TRIES} times without being stored")
    assert not clean_redis.hlen(redis_keys.event_tries(partition))


def test_an_erased_shoppers_entry_out_of_tries_is_dropped_not_dead_lettered(clean_redis, settings):
    from operations.erasure import shopper_erase
    from signals_app import consumer

    settings.EVENT_PARTITIONS = 1
    events_ingest(raw_events=[view("poison")])
    stream = redis_keys.event_stream(0)
    consumer._group_ensure(stream)
    # Read by a consumer that holds it (the erasure cannot take it from the stream) and has used up its tries.
    in_flight = clean_redis.xreadgroup(CONSUMER_GROUP, "slow", {stream: ">"})[0][1]
    clean_redis.hset(redis_keys.event_tries(0), in_flight[0][0], MAX_TRIES)
    shopper_erase(user_id="u1")

    report = consumer.DrainReport()
    consumer._process(stream, 0, in_flight, report, reclaimed=False)

    assert (report.dead_lettered, report.erased) == (0, 1)
    assert not DeadLetter.objects.exists()
    assert not clean_redis.xlen(redis_keys.dead_letter_stream(0))
    assert not clean_redis.xpending(stream, CONSUMER_GROUP)["pending"]


def test_tries_that_found_postgres_away_do_not_count(clean_redis, settings, monkeypatch):
    from django.db import OperationalError

    from graph_app.state.log import event_log_append
    from signals_app import consumer

    events_ingest(raw_events=[view("patient")])
    partition, stream = _stream_of("u1")
    settings.EVENT_RECLAIM_IDLE_MS = 0

    def away(*, records):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(consumer, "event_log_append", away)
    for _ in range(MAX_TRIES * 2):
        with pytest.raises(OperationalError):
            events_drain(partition=partition, consumer="test")
    monkeypatch.setattr(consumer, "event_log_append", event_log_append)

    report = events_drain(partition=partition, consumer="test")

    assert (report.stored, report.dead_lettered) == (1, 0)
    assert Event.objects.filter(event_id="patient").exists()
    assert clean_redis.xpending(stream, CONSUMER_GROUP)["pending"] == 0
    assert not clean_redis.hlen(redis_keys.event_tries(partition))


def test_a_replayed_dead_letter_is_stored_once_however_often_it_is_replayed(clean_redis, settings, monkeypatch):
    from graph_app.state.log import event_log_append
    from signals_app import consumer
    from signals_app.services import dead_letters_replay

    events_ingest(raw_events=[view("unlucky")])
    partition, _stream = _stream_of("u1")
    settings.EVENT_RECLAIM_IDLE_MS = 0
    _consumer_dies_inside_each_try(monkeypatch)
    for _ in range(MAX_TRIES):
        with pytest.raises(SystemExit):
            events_drain(partition=partition, consumer="crashing")
    monkeypatch.setattr(consumer, "event_log_append", event_log_append)  # whatever killed it is fixed
    events_drain(partition=partition, consumer="test")
    dead = DeadLetter.objects.get()
    assert not Event.objects.exists()

    assert dead_letters_replay(dead_letter_ids=[dead.pk]) == 1
    assert dead_letters_replay(dead_letter_ids=[dead.pk]) == 0  # replayed already: left alone
    report = events_drain(partition=partition, consumer="test")

    assert (report.stored, report.dead_lettered) == (1, 0)
    assert list(Event.objects.values_list("event_id", flat=True)) == ["unlucky"]
    dead.refresh_from_db()
    assert dead.replayed_at is not None

    DeadLetter.objects.filter(pk=dead.pk).update(replayed_at=None)  # a second copy replayed: a duplicate
    assert dead_letters_replay(dead_letter_ids=[dead.pk]) == 1
    again = events_drain(partition=partition, consumer="test")

    assert (again.stored, again.duplicates) == (0, 1)
    assert Event.objects.count() == 1


def test_drain_leaves_entries_alone_when_postgres_is_unreachable(clean_redis, monkeypatch):
    from signals_app import consumer

    events_ingest(raw_events=[view("kept")])
    monkeypatch.setattr(consumer, "_postgres_available", lambda: False)

    report = events_drain_all()

    assert report.skipped == "postgres_unavailable"
    assert stream_lengths() == 1
    _partition, stream = _stream_of("u1")
    assert clean_redis.xinfo_groups(stream) == []  # nothing was read, so nothing counts a delivery


def test_identify_entries_and_events_from_many_partitions(clean_redis):
    events_ingest(raw_events=[view(f"p{n}", user_id=f"user-{n}") for n in range(40)])
    assert len({redis_keys.partition_of(f"user-{n}") for n in range(40)}) == len(redis_keys.partitions())

    report = events_drain_all()

    assert report.stored == 40
    assert Event.objects.count() == 40
    assert stream_lengths() == 0
