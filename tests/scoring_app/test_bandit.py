from __future__ import annotations

import random
import time
from collections import Counter
from datetime import timedelta

import orjson
import pytest

from graph_app.features.online import features_fetch
from graph_app.model_registry.models import ModelVersion
from graph_app.model_registry.services import model_version_publish, models_serving_publish
from graph_app.online import catalog_entities_publish
from graph_app.state.models import BanditDecision, Impression
from personalization import redis_keys
from personalization.candidates import Candidate
from personalization.process_caches import process_caches_reset
from scoring_app.bandit import REACTION_COSTS, bandit_learn
from scoring_app.engine import registry
from scoring_app.engine.bandit import (
    BANDIT,
    MAX_BANDIT_ACTIONS,
    BanditContext,
    BanditItem,
    action_features,
    bandit_choose,
    bandit_context_fetch,
    bandit_context_from_features,
    bandit_example,
    bandit_log,
    bandit_model_dump,
    bandit_model_load,
    bandit_model_new,
    bandit_pmf,
    exploration_rng,
    exploration_window,
    shared_features,
)
from scoring_app.tasks import bandit_learn_task
from signals_app.consumer import events_drain_all
from signals_app.services import events_ingest
from surface_app.serving.slates import Slate, _impression_log

CATEGORIES = ("mugs", "bags", "lights")


def candidates(count: int) -> list[Candidate]:
    sources = ("similar", "graph", "popular")
    return [Candidate(f"sku-{n}", 1 - n / 100, sources[n % 3], "") for n in range(count)]


def context(count: int) -> BanditContext:
    return BanditContext(
        placement="home",
        hour=19,
        new_user=False,
        reason="low_confidence",
        top_categories=("mugs",),
        top_entities=("brand:retrospot",),
        items={
            f"sku-{n}": BanditItem(CATEGORIES[n % 3], (f"brand:b{n % 4}",), popularity_1d=n * 2.0, age_days=n * 5.0)
            for n in range(count)
        },
    )


def pmf_of(model, ctx: BanditContext, offered: list[Candidate]) -> list[float]:
    actions = [action_features(ctx, candidate, rank) for rank, candidate in enumerate(offered)]
    return bandit_pmf(model, shared_features(ctx), actions)


def teach(model, ctx: BanditContext, offered: list[Candidate], *, rewarded: str, rounds: int, seed: int = 3) -> None:
    """The bandit serves one slot `rounds` times and learns what it chose: only `rewarded` is ever clicked."""
    rng = random.Random(seed)
    actions = [action_features(ctx, candidate, rank) for rank, candidate in enumerate(offered)]
    ids = [candidate.item_id for candidate in offered]
    for _ in range(rounds):
        [pick] = bandit_choose(model=model, context=ctx, candidates=offered, k=1, rng=rng)
        cost = -1.0 if pick.item_id == rewarded else 0.0
        chosen = ids.index(pick.item_id)
        model.learn(
            bandit_example(
                shared=shared_features(ctx), actions=actions, chosen=chosen, cost=cost, propensity=pick.propensity
            )
        )


def test_a_new_bandit_explores_uniformly():
    offered = candidates(10)

    assert pmf_of(bandit_model_new(), context(10), offered) == pytest.approx([0.1] * 10)


def test_bandit_choose_returns_k_distinct_items_with_the_pmf_renormalized_over_what_is_left():
    offered, ctx = candidates(12), context(12)
    model = bandit_model_new()
    teach(model, ctx, offered, rewarded="sku-4", rounds=300)
    pmf = dict(zip([candidate.item_id for candidate in offered], pmf_of(model, ctx, offered), strict=True))

    picks = bandit_choose(model=model, context=ctx, candidates=offered, k=5, rng=random.Random(11))

    assert [pick.slot for pick in picks] == [0, 1, 2, 3, 4]
    assert len({pick.item_id for pick in picks}) == 5
    left = dict(pmf)
    for pick in picks:
        assert 0 < pick.propensity <= 1
        assert pick.propensity == pytest.approx(left[pick.item_id] / sum(left.values()), rel=1e-6)
        assert pick.features == action_features(ctx, offered[int(pick.item_id[4:])], int(pick.item_id[4:]))
        del left[pick.item_id]


def test_the_first_slot_is_drawn_with_the_pmf_s_probabilities():
    offered, ctx = candidates(5), context(5)
    model = bandit_model_new()
    teach(model, ctx, offered, rewarded="sku-2", rounds=60)
    pmf = pmf_of(model, ctx, offered)
    rng = random.Random(5)

    drawn = Counter(bandit_choose(model=model, context=ctx, candidates=offered, k=1, rng=rng)[0] for _ in range(4000))

    for pick, times in drawn.items():
        assert pick.propensity == pytest.approx(pmf[int(pick.item_id[4:])], rel=1e-6)
        assert times / 4000 == pytest.approx(pick.propensity, abs=0.03)


def test_exploration_draws_are_the_users_own_for_a_window_and_follow_the_pmf_across_users():
    offered, ctx = candidates(5), context(5)
    model = bandit_model_new()
    teach(model, ctx, offered, rewarded="sku-2", rounds=60)
    pmf = pmf_of(model, ctx, offered)
    now, hour = 1_800_000_000.0, 3600

    def pick(user: str, at: float) -> str:
        rng = exploration_rng(user_key=user, placement="home", now=at, seconds=hour)
        return bandit_choose(model=model, context=ctx, candidates=offered, k=1, rng=rng)[0].item_id

    minutes = [now + step * 60.0 for step in range(120)]
    windows = [exploration_window(user_key="u1", placement="home", now=at, seconds=hour) for at in minutes]
    start = windows[0]
    same = [at for at, window in zip(minutes, windows, strict=True) if window == start]

    # Within the user's window every request draws the same; windows are an hour, each user's at its own offset.
    assert len({pick("u1", at) for at in same}) == 1 and 1 <= len(same) <= 60
    assert sorted(set(windows)) == list(range(start, windows[-1] + 1)) and windows == sorted(windows)
    assert exploration_window(user_key="u1", placement="home", now=now + hour, seconds=hour) == start + 1
    # Half an hour on, some users' windows have turned and some not: shelves do not all change at once.
    later = {exploration_window(user_key=f"u{n}", placement="home", now=now + 1800, seconds=hour) for n in range(50)}
    assert len(later) == 2
    # Across users (and windows) the draws follow the PMF: the logged propensities hold.
    drawn = Counter(pick(f"user-{n}", now) for n in range(4000))
    for index, item in enumerate(offered):
        assert drawn[item.item_id] / 4000 == pytest.approx(pmf[index], abs=0.03)


def test_at_most_50_actions_are_scored():
    offered = candidates(80)

    picks = bandit_choose(model=bandit_model_new(), context=context(80), candidates=offered, k=70, rng=random.Random(1))

    assert len(picks) == MAX_BANDIT_ACTIONS
    assert {pick.item_id for pick in picks} == {f"sku-{n}" for n in range(MAX_BANDIT_ACTIONS)}
    assert picks[-1].propensity == pytest.approx(1.0)  # the last action left is certain


def test_no_candidates_or_no_slots_choose_nothing():
    model = bandit_model_new()

    assert bandit_choose(model=model, context=context(0), candidates=[], k=5, rng=random.Random(1)) == []
    assert bandit_choose(model=model, context=context(3), candidates=candidates(3), k=0, rng=random.Random(1)) == []


def test_the_bandit_learns_that_one_action_is_rewarded_and_keeps_it_across_dump_and_load():
    offered, ctx = candidates(10), context(10)
    model = bandit_model_new()

    teach(model, ctx, offered, rewarded="sku-7", rounds=1000)

    pmf = pmf_of(model, ctx, offered)
    assert pmf[7] > 0.5
    assert max(pmf[:7] + pmf[8:]) < pmf[7] / 10
    assert pmf_of(bandit_model_load(bandit_model_dump(model)), ctx, offered) == pmf


def test_feature_tokens_cannot_break_vw_s_text_format():
    ctx = BanditContext(placement="home page|x", hour=3, new_user=True, items={"a b:c|d": BanditItem("big mugs")})

    features = action_features(ctx, Candidate("a b:c|d", 1.0, "popular", ""), 0)

    assert shared_features(ctx) == "shared |U p=home_page/x h=night u=new"
    assert features == "|A s=popular pop=na age=na rk=0 c=big_mugs |I a_b=c/d"


@pytest.mark.django_db
def test_the_context_comes_from_the_feature_store():
    catalog_entities_publish(items={"sku-0": "category:mugs|brand:retrospot", "sku-1": "category:bags"})
    events_ingest(
        raw_events=[{"event_id": f"v{n}", "type": "view", "user_id": "fan", "item_id": "sku-0"} for n in range(3)]
    )
    offered = [Candidate("sku-0", 1.0, "similar", ""), Candidate("sku-1", 0.5, "popular", "")]
    now = time.time()

    known = bandit_context_fetch(user_key="fan", placement="home", candidates=offered, now=now)
    stranger = bandit_context_fetch(user_key="stranger", placement="home", candidates=offered, now=now)

    assert (known.new_user, known.top_categories, known.top_entities) == (False, ("mugs",), ("brand:retrospot",))
    assert known.items["sku-0"].category == "mugs"
    assert known.items["sku-0"].entities == ("brand:retrospot",)
    assert known.items["sku-0"].popularity_1d > 0
    assert "m=c" in action_features(known, offered[0], 0)
    assert (stranger.new_user, stranger.top_categories) == (True, ())
    # Serving builds the same context from the feature reads it already made for ranking (rows in any order).
    for user, fetched in (("fan", known), ("stranger", stranger)):
        features = features_fetch(user_key=user, item_ids=["sku-1", "sku-0"], placement="home", now=now)
        reused = bandit_context_from_features(
            placement="home", now=now, reason="", candidates=offered, features=features
        )
        assert repr(reused) == repr(fetched)  # (NaN ages compare unequal to themselves)


def serve(request_id: str, *, user_key: str = "u1", k: int = 3, seed: int = 1) -> list[str]:
    """A slate the bandit filled, logged the way serving logs it; returns the items in slot order."""
    offered, ctx = candidates(8), context(8)
    picks = bandit_choose(model=bandit_model_new(), context=ctx, candidates=offered, k=k, rng=random.Random(seed))
    slate = Slate(
        request_id=request_id,
        placement="home",
        items=[Candidate(pick.item_id, 0.5, "bandit", "", ("bandit",)) for pick in picks],
        confidence=0.0,
        model_version=None,
        bandit=bandit_log(context=ctx, candidates=offered, picks=picks),
    )
    _impression_log(slate=slate, user_key=user_key)
    return [pick.item_id for pick in picks]


@pytest.mark.django_db
def test_the_consumer_stores_bandit_impressions_with_their_propensity_and_the_decision(clean_redis):
    offered, ctx = candidates(8), context(8)
    picks = bandit_choose(model=bandit_model_new(), context=ctx, candidates=offered, k=3, rng=random.Random(1))
    ranked = Candidate("sku-99", 0.9, "similar", "", ("similar",))  # a slot the bandit did not fill
    slate = Slate(
        request_id="req-1",
        placement="home",
        items=[ranked, *(Candidate(pick.item_id, 0.5, "bandit", "", ("bandit",)) for pick in picks)],
        confidence=0.0,
        model_version=None,
        bandit=bandit_log(context=ctx, candidates=offered, picks=picks),
    )

    _impression_log(slate=slate, user_key="u1")
    report = events_drain_all()

    assert report.impressions == 1
    stored = list(Impression.objects.filter(request_id="req-1").order_by("slot").values_list("item_id", "propensity"))
    assert stored == [("sku-99", None), *((pick.item_id, pick.propensity) for pick in picks)]
    decision = BanditDecision.objects.get(request_id="req-1")
    assert decision.shared == shared_features(ctx)
    expected = [[candidate.item_id, action_features(ctx, candidate, rank)] for rank, candidate in enumerate(offered)]
    assert sorted(decision.actions) == sorted(expected)
    # The slate kept for attribution stays lean: what the bandit learns from goes to the log only.
    kept = orjson.loads(clean_redis.get(redis_keys.slate("req-1")))
    assert "bandit" not in kept
    assert all("features" not in item for item in kept["items"])


@pytest.mark.django_db
def test_a_slate_without_the_bandit_logs_no_propensity_and_no_decision():
    slate = Slate(
        "req-2", "home", [Candidate("sku-1", 0.9, "similar", "", ("similar",))], confidence=1.0, model_version=None
    )

    _impression_log(slate=slate, user_key="u1")
    events_drain_all()

    assert Impression.objects.get(request_id="req-2").propensity is None
    assert not BanditDecision.objects.exists()


@pytest.mark.django_db
def test_bandit_learn_feeds_each_impression_once_and_publishes_a_version():
    clicked_slate = serve("req-a", seed=1)
    serve("req-b", user_key="u2", seed=2)
    events_ingest(
        raw_events=[
            {"event_id": "c1", "type": "click", "user_id": "u1", "item_id": clicked_slate[1], "request_id": "req-a"},
            {"event_id": "p1", "type": "purchase", "user_id": "u1", "item_id": clicked_slate[1], "request_id": "req-a"},
        ]
    )
    events_drain_all()

    # Within the label window only the impression that got a reaction is fed, with its strongest reaction.
    first = bandit_learn()
    assert (first.learned, first.rewarded, first.unlearnable) == (1, 1, 0)
    fed = dict(Impression.objects.exclude(bandit_cost=None).values_list("item_id", "bandit_cost"))
    assert fed == {clicked_slate[1]: REACTION_COSTS["purchase"]}
    published = ModelVersion.objects.get(kind=BANDIT, state="active")
    assert published.version == first.version
    assert published.metrics["examples"] == 1

    # Once the window has closed the others are fed with no reaction.
    second = bandit_learn(label_window=timedelta(0))
    assert (second.learned, second.rewarded) == (5, 0)
    assert set(Impression.objects.exclude(request_id="req-a", slot=1).values_list("bandit_cost", flat=True)) == {0.0}
    assert ModelVersion.objects.get(kind=BANDIT, state="active").metrics["learned_from"] == first.version

    # Nothing new: nothing learned, no new version.
    third = bandit_learn_task()
    assert (third["learned"], third["version"]) == (0, None)
    assert ModelVersion.objects.filter(kind=BANDIT).count() == 2
    assert not Impression.objects.filter(propensity__isnull=False, bandit_cost=None).exists()


@pytest.mark.django_db
def test_the_first_learn_publishes_an_untrained_model_that_serving_loads():
    report = bandit_learn()
    models_serving_publish(kinds=[BANDIT])  # what the commit hook does outside the test's transaction
    process_caches_reset(["score.serving_models"])
    try:
        registry.models_refresh()
        serving = registry.serving_model(BANDIT, user_key="u1")
    finally:
        process_caches_reset(["score.serving_models"])

    assert report.learned == 0
    assert serving is not None
    assert serving.version == report.version
    picks = bandit_choose(model=serving.model, context=context(4), candidates=candidates(4), k=2, rng=random.Random(1))
    assert [pick.propensity for pick in picks] == pytest.approx([0.25, 1 / 3])
    assert bandit_learn().version is None  # a model exists now and nothing was learned


@pytest.mark.django_db
def test_bandit_learn_continues_from_the_active_model():
    offered, ctx = candidates(6), context(6)
    model = bandit_model_new()
    teach(model, ctx, offered, rewarded="sku-1", rounds=400)
    model_version_publish(kind=BANDIT, artifact=bandit_model_dump(model), metrics={})
    serve("req-c", seed=4)
    events_drain_all()

    report = bandit_learn(label_window=timedelta(0))

    learned = bandit_model_load(bytes(ModelVersion.objects.get(version=report.version).artifact))
    assert report.learned == 3
    assert max(pmf_of(learned, ctx, offered)) == pmf_of(learned, ctx, offered)[1]  # what it knew is kept


@pytest.mark.django_db
def test_the_learner_is_scheduled_every_minute():
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from operations.bootstrap import schedules_install_defaults

    schedules_install_defaults()

    interval = PeriodicTask.objects.get(task="scoring.bandit_learn").interval
    assert (interval.every, interval.period) == (1, IntervalSchedule.MINUTES)
