"""Decayed sums as of many instants: the same numbers as summing each instant's events directly."""

from __future__ import annotations

import numpy as np
import pytest

from graph_app.features.decayed_sums import decayed_sums

HOUR, DAY = 3600.0, 86400.0
HALF_LIVES = [HOUR, DAY, 7 * DAY]
MICRO = 1_000_000


def _direct(series, times, weights, query_series, query_times):
    sums = np.zeros((len(query_series), len(HALF_LIVES)))
    latest = np.full(len(query_series), np.nan)
    for row, (wanted, at) in enumerate(zip(query_series, query_times, strict=True)):
        mask = (series == wanted) & (times <= at)
        if mask.any():
            latest[row] = times[mask].max() / MICRO
            for column, half_life in enumerate(HALF_LIVES):
                sums[row, column] = np.sum(weights[mask] * np.exp2(-(at - times[mask]) / MICRO / half_life))
    return sums, latest


def test_every_instant_sums_what_happened_by_then_across_blocks_of_half_lives():
    rng = np.random.default_rng(7)
    events = 5000
    series = np.sort(rng.integers(0, 60, events))
    # 120 days: the 1-hour half-life spans 2,880 half-lives, several blocks of references.
    times = np.concatenate([np.sort(rng.integers(0, 120 * DAY * MICRO, int((series == s).sum()))) for s in range(60)])
    weights = rng.choice([1.0, 3.0, 8.0], events)
    query_series = rng.integers(0, 65, 800)  # a few series without events
    query_times = rng.integers(0, 125 * DAY * MICRO, 800)
    picked = rng.integers(0, events, 100)  # at an event's very instant: it counts
    query_series[:100], query_times[:100] = series[picked], times[picked]

    sums, latest = decayed_sums(
        event_series=series, event_times=times, event_weights=weights, half_lives=HALF_LIVES,
        query_series=query_series, query_times=query_times,
    )  # fmt: skip

    expected_sums, expected_latest = _direct(series, times, weights, query_series, query_times)
    assert sums == pytest.approx(expected_sums, rel=1e-10, abs=1e-250)
    assert latest == pytest.approx(expected_latest, nan_ok=True)
    assert np.isnan(latest[query_series >= 60]).all() and (sums[query_series >= 60] == 0).all()
    assert (latest[:100] == times[picked] / MICRO).all()


def test_no_events_no_sums():
    sums, latest = decayed_sums(
        event_series=np.zeros(0, np.int64), event_times=np.zeros(0, np.int64), event_weights=np.zeros(0),
        half_lives=HALF_LIVES, query_series=np.array([0, 1]), query_times=np.array([5, 6]),
    )  # fmt: skip
    assert (sums == 0).all() and np.isnan(latest).all()
