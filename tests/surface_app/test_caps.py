from __future__ import annotations

import threading
import time

import pytest
from redis.crc import key_slot

from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.identity import identity_link
from signals_app.services import events_ingest
from surface_app.models import FrequencyCap
from surface_app.serving import caps
from surface_app.serving.caps import (
    CapItem,
    CapSpec,
    CapState,
    cap_block_reason,
    caps_block_reasons,
    caps_decode,
    caps_enforce_and_record,
    caps_horizon,
    caps_queue,
)

DAY = 86400
NOW = 1_700_000_000.0
USER = "u1"
SHOE = CapItem("sku-1", category="shoes", entities=("brand:acme", "colour:red"), campaign="spring")
BOOT = CapItem("sku-2", category="shoes", entities=("brand:acme",))
HAT = CapItem("sku-3", category="hats", entities=("brand:other",), campaign="spring")
SCARF = CapItem("sku-4", category="scarves")

_requests = iter(range(1_000_000))


def serve(
    items: list[CapItem],
    specs: list[CapSpec],
    *,
    now: float = NOW,
    placement: str = "home",
    user_key: str = USER,
    request_id: str | None = None,
    limit: int | None = None,
    retention_seconds: int | None = None,
) -> list[str]:
    """One slate's enforce call; returns the refused ids."""
    return caps_enforce_and_record(
        user_key=user_key, placement=placement, request_id=request_id or f"r{next(_requests)}", items=items,
        specs=specs, now=now, limit=limit, retention_seconds=retention_seconds,
    )  # fmt: skip


def read_state(specs: list[CapSpec], *, now: float = NOW, user_key: str = USER) -> CapState:
    pipeline = get_redis().pipeline(transaction=False)
    caps_queue(pipeline, user_key=user_key, now=now, horizon_seconds=caps_horizon(specs))
    return caps_decode(pipeline.execute(), now=now)


_DECODE_TIMES = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
local times = value and cmsgpack.unpack(value) or {}
local texts = {}
for n, served in ipairs(times) do texts[n] = string.format('%.17g', served) end
return texts
"""


def recorded(field: str, user_key: str = USER) -> list[float]:
    """The impression times counted for one field ("i:<item>", "c:<category>", ...)."""
    return [float(text) for text in get_redis().eval(_DECODE_TIMES, 1, redis_keys.user_cap_counts(user_key), field)]


def user_keys(user_key: str = USER) -> list[str]:
    return [
        redis_keys.user_cap_counts(user_key),
        redis_keys.user_cap_touched(user_key),
        redis_keys.user_cap_blocks(user_key),
    ]


def test_three_impressions_in_the_window_are_allowed_and_the_fourth_is_refused():
    specs = [CapSpec("item", max_impressions=3, window_seconds=DAY, name="item-3-a-day")]

    outcomes = [serve([SHOE], specs, now=NOW + n) for n in range(4)]

    assert outcomes == [[], [], [], ["sku-1"]]
    assert recorded("i:sku-1") == [NOW, NOW + 1, NOW + 2]
    state = read_state(specs, now=NOW + 10)
    assert cap_block_reason(state, specs, SHOE, "home") == "cap:item-3-a-day"
    assert cap_block_reason(state, specs, BOOT, "home") is None


def test_items_accepted_earlier_in_the_same_call_count():
    specs = [CapSpec("category", max_impressions=2, window_seconds=DAY, name="two-shoes")]
    third_shoe = CapItem("sku-9", category="shoes")

    refused = serve([SHOE, HAT, BOOT, third_shoe], specs)

    assert refused == ["sku-9"]
    assert cap_block_reason(read_state(specs), specs, third_shoe, "home") == "cap:two-shoes"


def test_the_window_slides():
    specs = [CapSpec("item", max_impressions=3, window_seconds=1000, name="item")]
    for offset in (0, 100, 200):
        assert serve([SHOE], specs, now=NOW + offset) == []

    assert serve([SHOE], specs, now=NOW + 999) == ["sku-1"]  # all three still inside
    assert cap_block_reason(read_state(specs, now=NOW + 999), specs, SHOE, "home") == "cap:item"
    # The first impression leaves the window: one more fits, then the cap holds again.
    assert cap_block_reason(read_state(specs, now=NOW + 1000.5), specs, SHOE, "home") is None
    assert serve([SHOE], specs, now=NOW + 1000.5) == []
    assert serve([SHOE], specs, now=NOW + 1001) == ["sku-1"]


def test_category_scope_caps_every_item_of_the_category():
    specs = [CapSpec("category", max_impressions=2, window_seconds=DAY, name="shoes")]
    serve([SHOE], specs)
    serve([BOOT], specs)

    assert serve([CapItem("sku-7", category="shoes"), HAT], specs) == ["sku-7"]
    state = read_state(specs)
    assert caps_block_reasons(state, specs, [SHOE, BOOT, HAT, SCARF], "home") == {
        "sku-1": "cap:shoes", "sku-2": "cap:shoes",
    }  # fmt: skip


def test_entity_scope_caps_items_sharing_any_entity():
    specs = [CapSpec("entity", max_impressions=2, window_seconds=DAY, name="brand")]
    serve([SHOE, BOOT], specs)  # brand:acme twice, colour:red once

    assert serve(
        [CapItem("sku-8", entities=("colour:red",)), CapItem("sku-9", entities=("brand:acme",)), HAT], specs
    ) == ["sku-9"]
    state = read_state(specs)
    assert cap_block_reason(state, specs, CapItem("sku-10", entities=("size:9", "brand:acme")), "home") == "cap:brand"
    assert cap_block_reason(state, specs, CapItem("sku-11", entities=("colour:red",)), "home") == "cap:brand"
    assert cap_block_reason(state, specs, HAT, "home") is None


def test_campaign_scope_caps_the_campaigns_items_and_leaves_others_alone():
    specs = [CapSpec("campaign", max_impressions=1, window_seconds=DAY, name="spring-once")]
    serve([SHOE], specs)

    assert serve([HAT, BOOT, SCARF], specs) == ["sku-3"]
    assert caps_block_reasons(read_state(specs), specs, [SHOE, HAT, BOOT], "home") == {
        "sku-1": "cap:spring-once", "sku-3": "cap:spring-once",
    }  # fmt: skip


def test_placement_scope_counts_slates_of_that_placement():
    specs = [CapSpec("placement", max_impressions=2, window_seconds=DAY, name="banner-twice")]
    assert serve([SHOE, BOOT, HAT], specs, request_id="a") == []
    assert serve([SHOE, BOOT], specs, request_id="b") == []
    # The same request may record more (its slate counts once); a third slate may not, in this placement only.
    assert serve([SCARF], specs, request_id="b") == []

    assert serve([SCARF, HAT], specs, request_id="c") == ["sku-4", "sku-3"]
    assert serve([SCARF], specs, request_id="d", placement="pdp") == []
    state = read_state(specs)
    assert cap_block_reason(state, specs, SCARF, "home") == "cap:banner-twice"
    assert cap_block_reason(state, specs, SCARF, "pdp") is None


def test_a_per_placement_cap_counts_only_its_placements_impressions():
    everywhere = [CapSpec("item", max_impressions=2, window_seconds=DAY, name="anywhere")]
    on_home = [CapSpec("item", max_impressions=2, window_seconds=DAY, name="home-only", per_placement=True)]
    serve([SHOE], everywhere, placement="pdp")
    serve([SHOE], everywhere, placement="cart")

    assert serve([SHOE], on_home, placement="home") == []
    assert serve([SHOE], everywhere, placement="home") == ["sku-1"]
    state = read_state(everywhere)
    assert cap_block_reason(state, on_home, SHOE, "home") is None
    assert cap_block_reason(state, on_home, SHOE, "pdp") is None
    assert cap_block_reason(state, everywhere, SHOE, "home") == "cap:anywhere"


def test_the_first_spec_that_refuses_names_the_reason():
    specs = [
        CapSpec("item", max_impressions=5, window_seconds=DAY, name="item"),
        CapSpec("category", max_impressions=1, window_seconds=DAY, name="category"),
        CapSpec("entity", max_impressions=1, window_seconds=DAY, name="entity"),
    ]
    serve([SHOE], specs)

    state = read_state(specs)
    assert cap_block_reason(state, specs, BOOT, "home") == "cap:category"
    assert cap_block_reason(state, specs, CapItem("sku-5", entities=("brand:acme",)), "home") == "cap:entity"


def test_limit_fills_the_slate_with_spare_candidates():
    specs = [CapSpec("item", max_impressions=1, window_seconds=DAY, name="once")]
    serve([BOOT], specs)

    refused = serve([SHOE, BOOT, HAT, SCARF], specs, limit=2)

    assert refused == ["sku-2"]  # SHOE and HAT fill the two slots; SCARF is neither recorded nor refused
    assert sorted(get_redis().hkeys(redis_keys.user_cap_counts(USER))) == [b"i:sku-1", b"i:sku-2", b"i:sku-3"]


def test_spare_candidates_are_checked_against_their_own_history():
    specs = [CapSpec("item", max_impressions=1, window_seconds=DAY, name="once")]
    serve([BOOT, HAT], specs)

    # The script reads the slots' fields first, the spares' only once a refusal sends it on to them.
    assert serve([SHOE, BOOT, HAT, SCARF], specs, limit=2) == ["sku-2", "sku-3"]
    assert recorded("i:sku-1") == [NOW]
    assert recorded("i:sku-4") == [NOW]


def test_every_entity_of_a_spare_is_checked():
    specs = [CapSpec("entity", max_impressions=1, window_seconds=DAY, name="entity-once", per_placement=True)]
    serve([CapItem("sku-1", entities=("brand:a", "colour:red"))], specs)
    offered = [
        CapItem("sku-2", entities=("brand:b",)),
        CapItem("sku-3", category="hats"),  # no entity: nothing to count
        CapItem("sku-4", entities=("brand:c", "colour:red")),
        CapItem("sku-5", entities=("brand:d", "size:9")),
    ]

    assert serve(offered, specs, limit=3) == ["sku-4"]
    assert recorded("home\x1fe:brand:d") == recorded("home\x1fe:size:9") == [NOW]
    assert recorded("home\x1fe:brand:c") == []
    assert recorded("home\x1fe:colour:red") == [NOW]


def test_each_field_keeps_what_the_caps_counting_it_need():
    specs = [
        CapSpec("category", max_impressions=1, window_seconds=10, name="once-on-home", per_placement=True),
        CapSpec("category", max_impressions=3, window_seconds=100, name="three-anywhere"),
    ]
    outcomes = [
        serve([CapItem(f"sku-{offset}", category="shoes")], specs, now=NOW + offset) for offset in (0, 11, 22, 33)
    ]

    assert outcomes == [[], [], [], ["sku-33"]]
    assert recorded("home\x1fc:shoes") == [NOW + 22]
    assert recorded("c:shoes") == [NOW, NOW + 11, NOW + 22]


def test_a_skip_ingested_as_an_event_cools_the_item_down_until_the_window_passes():
    specs = [
        CapSpec("cooldown", max_impressions=1, window_seconds=3600, name="after-skip"),
        CapSpec("item", max_impressions=3, window_seconds=DAY, name="item"),
    ]
    report = events_ingest(
        raw_events=[
            {"event_id": "e1", "type": "skip", "user_id": USER, "item_id": "sku-1"},
            {"event_id": "e2", "type": "hide", "user_id": USER, "item_id": "sku-3"},
            {"event_id": "e3", "type": "view", "user_id": USER, "item_id": "sku-2"},
        ]
    )
    assert report.accepted == 3
    now = time.time()

    state = read_state(specs, now=now)
    assert caps_block_reasons(state, specs, [SHOE, BOOT, HAT], "home") == {"sku-1": "cooldown", "sku-3": "cooldown"}
    assert serve([SHOE, BOOT, HAT], specs, now=now) == ["sku-1", "sku-3"]

    later = now + 3601
    assert caps_block_reasons(read_state(specs, now=later), specs, [SHOE, BOOT, HAT], "home") == {}
    assert serve([SHOE, HAT], specs, now=later) == []


def test_the_cooldown_set_is_bounded(monkeypatch):
    monkeypatch.setattr("graph_app.state.ingest.COOLDOWN_ITEMS_KEPT", 3)
    events_ingest(
        raw_events=[
            {
                "event_id": f"e{n}",
                "type": "skip",
                "user_id": USER,
                "item_id": f"sku-{n}",
                "timestamp": time.time() - 60 + n,
            }
            for n in range(5)
        ]
    )

    cooled = get_redis().zrange(redis_keys.user_cooldown(USER), 0, -1)
    assert cooled == [b"sku-2", b"sku-3", b"sku-4"]  # the newest three
    assert 0 < get_redis().ttl(redis_keys.user_cooldown(USER)) <= 30 * DAY


@pytest.mark.django_db
def test_identify_carries_the_sessions_cooldowns_to_the_user():
    events_ingest(raw_events=[{"event_id": "e1", "type": "hide", "session_id": "s-1", "item_id": "sku-1"}])

    identity_link(user_id="alice", session_id="s-1")

    specs = [CapSpec("cooldown", max_impressions=1, window_seconds=3600, name="hide")]
    assert cap_block_reason(read_state(specs, now=time.time(), user_key="alice"), specs, SHOE, "home") == "cooldown"
    assert not get_redis().exists(redis_keys.user_cooldown("session:s-1"))


def test_racing_requests_of_one_user_never_exceed_a_cap():
    specs = [CapSpec("item", max_impressions=3, window_seconds=DAY, name="three")]
    start = threading.Barrier(20)
    refusals: list[list[str]] = []

    def one_request(number: int) -> None:
        start.wait()
        refusals.append(serve([SHOE], specs, request_id=f"race-{number}", now=NOW + number / 100))

    threads = [threading.Thread(target=one_request, args=(number,)) for number in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(refusals) == 20
    assert sum(1 for refused in refusals if not refused) == 3
    assert len(recorded("i:sku-1")) == 3


def test_no_spec_reads_and_writes_nothing(clean_redis):
    before = clean_redis.info("commandstats")

    assert (
        caps_enforce_and_record(user_key=USER, placement="home", request_id="r", items=[SHOE], specs=[], now=NOW) == []
    )
    assert cap_block_reason(caps_decode(caps.EMPTY_REPLIES, now=NOW), [], SHOE, "home") is None

    after = clean_redis.info("commandstats")
    assert {name for name in after if after[name] != before.get(name)} <= {"cmdstat_info"}
    assert clean_redis.dbsize() == 0


def test_only_cooldowns_record_no_impressions():
    specs = [CapSpec("cooldown", max_impressions=1, window_seconds=3600, name="cool")]

    assert serve([SHOE], specs) == []

    assert not get_redis().exists(*user_keys())


def test_a_field_keeps_only_what_its_largest_cap_needs():
    specs = [
        CapSpec("item", max_impressions=1, window_seconds=10, name="one-per-10s"),
        CapSpec("item", max_impressions=3, window_seconds=100, name="three-per-100s"),
    ]
    outcomes = [serve([SHOE], specs, now=NOW + offset, retention_seconds=1000) for offset in (0, 5, 11, 22, 33, 101)]

    assert outcomes == [[], ["sku-1"], [], [], ["sku-1"], []]
    assert recorded("i:sku-1") == [NOW + 11, NOW + 22, NOW + 101]  # the newest three, though NOW is retained


def test_fields_untouched_for_the_retention_window_are_dropped():
    specs = [CapSpec("item", max_impressions=5, window_seconds=1000, name="item")]
    serve([SHOE, BOOT], specs, now=NOW, retention_seconds=2000)

    serve([HAT], specs, now=NOW + 1500, retention_seconds=2000)
    assert sorted(get_redis().hkeys(redis_keys.user_cap_counts(USER))) == [b"i:sku-1", b"i:sku-2", b"i:sku-3"]
    assert 1000 < get_redis().ttl(redis_keys.user_cap_counts(USER)) <= 2000

    serve([SCARF], specs, now=NOW + 2100, retention_seconds=2000)
    assert sorted(get_redis().hkeys(redis_keys.user_cap_counts(USER))) == [b"i:sku-3", b"i:sku-4"]
    assert sorted(get_redis().zrange(redis_keys.user_cap_touched(USER), 0, -1)) == [b"i:sku-3", b"i:sku-4"]


def test_blocks_that_are_over_are_dropped():
    specs = [CapSpec("item", max_impressions=1, window_seconds=10, name="once")]
    serve([CapItem(f"sku-{n}") for n in range(40)], specs, now=NOW)
    assert get_redis().hlen(redis_keys.user_cap_blocks(USER)) == 40

    serve([SHOE], specs, now=NOW + 11)

    assert get_redis().hkeys(redis_keys.user_cap_blocks(USER)) == [b"item/1/10\x1fi:sku-1"]


def test_a_changed_cap_does_not_reuse_the_old_caps_blocks():
    old = [CapSpec("item", max_impressions=1, window_seconds=DAY, name="once")]
    serve([SHOE], old)
    assert cap_block_reason(read_state(old), old, SHOE, "home") == "cap:once"

    new = [CapSpec("item", max_impressions=2, window_seconds=DAY, name="twice")]
    assert cap_block_reason(read_state(new), new, SHOE, "home") is None
    assert serve([SHOE], new) == []  # the counts are shared: this is the second
    assert serve([SHOE], new) == ["sku-1"]
    assert cap_block_reason(read_state(new), new, SHOE, "home") == "cap:twice"


def test_the_read_path_agrees_with_the_enforce_script():
    specs = [
        CapSpec("item", max_impressions=2, window_seconds=500, name="item"),
        CapSpec("category", max_impressions=3, window_seconds=2000, name="category"),
        CapSpec("entity", max_impressions=2, window_seconds=DAY, name="entity", per_placement=True),
    ]
    catalog = [SHOE, BOOT, HAT, SCARF, CapItem("sku-5", category="hats"), CapItem("sku-6", entities=("brand:other",))]
    for step in range(12):
        serve(catalog[step % 4 : step % 4 + 2], specs, now=NOW + 100 * step, placement=("home", "pdp")[step % 2])

    now = NOW + 1250
    for placement in ("home", "pdp"):
        blocked = caps_block_reasons(read_state(specs, now=now), specs, catalog, placement)
        assert blocked  # the history makes some of them refused, not all
        assert len(blocked) < len(catalog)
        # Each item alone through the script, the history restored after each probe.
        snapshot = {key: get_redis().dump(key) for key in user_keys()}
        for item in catalog:
            refused = serve([item], specs, now=now, placement=placement, request_id=f"probe-{item.item_id}")
            assert (item.item_id in refused) == (item.item_id in blocked), (placement, item.item_id)
            for key, value in snapshot.items():
                get_redis().restore(key, 0, value, replace=True)


def test_a_users_keys_share_one_cluster_slot():
    for user_key in ("u1", "session:abc", "user-42"):
        slots = {
            key_slot(key.encode())
            for key in (
                *user_keys(user_key),
                redis_keys.user_cooldown(user_key),
                redis_keys.user_recent_items(user_key),
                redis_keys.user_affinity(user_key),
            )
        }
        assert len(slots) == 1


def test_scopes_match_the_models_choices():
    assert set(FrequencyCap.Scope.values) == caps.SCOPES


def test_the_script_is_loaded_again_after_a_restart():
    specs = [CapSpec("item", max_impressions=1, window_seconds=DAY, name="once")]
    serve([SHOE], specs)
    get_redis().script_flush()

    assert serve([SHOE], specs) == ["sku-1"]
