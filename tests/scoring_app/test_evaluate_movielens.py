"""`manage.py evaluate_movielens`: the Recommenders splitter and metrics, the command end to end on a tiny
synthetic folder, and the split counts of the real MovieLens 100K (skipped when it is absent)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from operations.evaluation.metrics import top_k_metrics
from operations.evaluation.movielens import DEFAULT_GENRES, movielens_load
from tests.scoring_app.scratch_checks import assert_live_stores_untouched

MOVIELENS_100K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ml-100k"
METRICS = {"MAP", "nDCG@10", "Precision@10", "Recall@10"}


def test_stratified_split_matches_the_reference_draws_and_rounding():
    from operations.evaluation.split import stratified_split

    # np.random.seed(42) draws, in row order: .3745 .9507 .7320 .5987 | .1560 .1560 | .0581 |
    # .8662 .6011 .7081 .0206 .9699 .8324. Group a (4 rows): round(3) = 3 to train, its highest draw (row 1) is
    # held out; b (2): round(1.5) = 2, both train; c (1): round(0.75) = 1, trains; d (6): round(4.5) = 4 (halves
    # to even), rows 7 and 11 (the two highest draws) are held out.
    groups = np.array(["a"] * 4 + ["b"] * 2 + ["c"] + ["d"] * 6)

    train = stratified_split(groups=groups)

    assert train.astype(int).tolist() == [1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1]


def test_stratified_folds_spread_every_group_over_the_folds():
    from operations.evaluation.split import stratified_folds

    groups = np.array(["a"] * 4 + ["b"] * 2 + ["c"] + ["d"] * 6)

    folds = stratified_folds(groups=groups, folds=2)

    # a: ranks by draw are rows 0, 3, 2, 1 -> the first round(2) to fold 0; c: round(0.5) = 0 -> fold 1;
    # d: rows 10, 8, 9 (lowest draws) fold 0, rows 12, 7, 11 fold 1.
    assert folds[[0, 1, 2, 3]].tolist() == [0, 1, 1, 0]
    assert folds[6] == 1
    assert folds[7:].tolist() == [1, 0, 0, 0, 1, 1]
    assert sorted(folds[4:6].tolist()) == [0, 1]


def test_metrics_follow_the_benchmark_definitions():
    recommended = {"u1": ["a", "x", "b", "y"], "u2": ["z"]}
    relevant = {"u1": {"a", "b", "c"}, "u2": {"q"}}

    metrics = top_k_metrics(recommended=recommended, relevant=relevant, k=10)

    # u1: hits at ranks 1 and 3 of 3 relevant items; u2: no hit, counts 0 in every average.
    ndcg_u1 = (1 / math.log(2) + 1 / math.log(4)) / (1 / math.log(2) + 1 / math.log(3) + 1 / math.log(4))
    assert metrics["nDCG@10"] == pytest.approx(ndcg_u1 / 2)
    assert metrics["Precision@10"] == pytest.approx((2 / 10) / 2)
    assert metrics["Recall@10"] == pytest.approx((2 / 3) / 2)
    assert metrics["MAP"] == pytest.approx(((1 / 1 + 2 / 3) / 3) / 2)  # divided by all 3 relevant, not min(3, 10)


def test_ideal_dcg_is_over_min_of_relevant_and_k():
    relevant = {"u": {f"i{n}" for n in range(12)}}
    recommended = {"u": [f"i{n}" for n in range(10)]}

    metrics = top_k_metrics(recommended=recommended, relevant=relevant, k=10)

    assert metrics["nDCG@10"] == pytest.approx(1.0)
    assert metrics["Recall@10"] == pytest.approx(10 / 12)
    assert metrics["MAP"] == pytest.approx(10 / 12)


def _synthetic_movielens(folder: Path) -> int:
    """Two tastes: users 1-16 watch comedies (movies 1-20), users 17-32 horror films (21-40), each mostly their
    own genre's more popular films, and once in a while one of the other genre. Returns the number of ratings."""
    rng = np.random.default_rng(7)
    genres = list(DEFAULT_GENRES)
    items = []
    for movie in range(1, 41):
        flags = ["0"] * 19
        flags[genres.index("Comedy" if movie <= 20 else "Horror")] = "1"
        year = 1990 + movie % 8
        items.append(f"{movie}|Film {movie} ({year})|01-Jan-{year}||http://example.invalid/{movie}|" + "|".join(flags))
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    (folder / "u.genre").write_text("".join(f"{name}|{index}\n" for index, name in enumerate(genres)))
    (folder / "u.user").write_text(
        "".join(f"{user}|{20 + user}|{'MF'[user % 2]}|student|0{user:04d}\n" for user in range(1, 33))
    )
    lines = []
    popularity = 1.0 / np.arange(1, 21) ** 0.7
    for user in range(1, 33):
        own = 0 if user <= 16 else 20
        watched = rng.choice(20, size=12, replace=False, p=popularity / popularity.sum()) + 1 + own
        other = rng.choice(20, size=1) + 1 + (20 - own)
        for position, movie in enumerate([*watched.tolist(), *other.tolist()]):
            lines.append(f"{user}\t{movie}\t{rng.integers(1, 6)}\t{880000000 + user * 5000 + position * 60}")
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return len(lines)


@pytest.mark.django_db(transaction=True)
def test_command_runs_end_to_end_in_scratch_stores(tmp_path, clean_redis):
    ratings = _synthetic_movielens(tmp_path)
    stdout, stderr = io.StringIO(), io.StringIO()
    live_database = connection.settings_dict["NAME"]
    # Pub/sub is server-wide: listen to the live channel layer's groups (WebSocket shelves) during the run.
    listener = clean_redis.pubsub()
    listener.psubscribe(f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__*")

    call_command("evaluate_movielens", str(tmp_path), "--seed", "42", stdout=stdout, stderr=stderr)

    document = json.loads(stdout.getvalue())
    assert document["split"] == "test"
    assert document["train_rows"] + document["test_rows"] == ratings
    assert document["test_users"] > 0
    assert set(document["results"]) == {"served", "served_default", "popularity"}
    for row in document["results"].values():
        assert set(row) == METRICS
        assert all(0.0 <= value <= 1.0 for value in row.values())
    results = document["results"]
    # The served rows are the REST path's slates after the scheduled training chain (every slate of 10 items).
    assert results["served"]["nDCG@10"] > results["popularity"]["nDCG@10"]
    assert results["served_default"]["Precision@10"] > 0
    assert document["diagnostics"]["short_slates"] == 0
    assert document["diagnostics"]["events"]["stored"] == document["train_rows"]
    assert "scoring.ranker_train: done" in stderr.getvalue()
    assert_live_stores_untouched(live_database=live_database, clean_redis=clean_redis, listener=listener)


def test_command_refuses_the_live_redis_database(tmp_path):
    from django.core.management.base import CommandError

    _synthetic_movielens(tmp_path)
    live = int(settings.REDIS_URL.rsplit("/", 1)[1] or 0)

    with pytest.raises(CommandError, match="live"):
        call_command("evaluate_movielens", str(tmp_path), "--redis-db", str(live), stdout=io.StringIO())


@pytest.mark.skipif(not (MOVIELENS_100K / "u.data").exists(), reason="MovieLens 100K is not in ../shared/data")
def test_split_counts_on_movielens_100k():
    from operations.evaluation.split import stratified_split

    data = movielens_load(folder=MOVIELENS_100K)

    train = stratified_split(groups=data.movie_ids)

    assert (int(train.sum()), int((~train).sum())) == (75_066, 24_934)
    assert len(data.movies) == 1682
    assert len(data.users) == 943
