"""Exponentially decayed sums of a log's events as of many instants at once: the offline twin of the online counters.

Online, each item's counters are one running value per half-life, decayed and added to at every event
(`graph_app/state/packed_add.lua`). Offline, training asks for the same sums as of its own instants: each
judged user's rows are as of their own cut, so a popular item may be asked for at thousands of instants. Summing
the item's events again for each instant (a scan per row in SQL) took most of a ranker's fit at 100 k items; here
each series is read once, its running values computed once, and every instant is a binary search.

The running value at event k, against a reference time r: P_k = sum of w_i * 2^((t_i - r) / h) over i <= k; the sum
as of T >= t_k is P_k * 2^((r - T) / h). A reference is kept within BLOCK_HALF_LIVES half-lives of its events so
that 2^((t - r) / h) stays far from overflow; each block carries the value of the blocks before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# 2^500 is far from a double's limit (2^1023), with room for sums of millions of events.
BLOCK_HALF_LIVES = 500.0


def decayed_sums(
    *,
    event_series: np.ndarray,
    event_times: np.ndarray,
    event_weights: np.ndarray,
    half_lives: Sequence[float],
    query_series: np.ndarray,
    query_times: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query (series, time): the decayed sum of its series' events at or before the time, one column per
    half-life, and the latest such event's time (NaN, and sums of 0, when there is none).

    Events are ordered by series then time; times are integers (microseconds: an event at the query's very instant
    counts, as `occurred_at <= as_of` does); half-lives in seconds."""
    queries = len(query_series)
    sums = np.zeros((queries, len(half_lives)))
    latest = np.full(queries, np.nan)
    if not len(event_series) or not queries:
        return sums, latest
    # Series and time as one sortable integer: times ranked among all the times involved (equal times, equal rank:
    # the first position of their run).
    ranked = np.sort(np.concatenate([event_times, query_times]))
    width = np.int64(len(ranked) + 1)
    event_keys = event_series.astype(np.int64) * width + np.searchsorted(ranked, event_times)
    query_keys = query_series.astype(np.int64) * width + np.searchsorted(ranked, query_times)
    last = np.searchsorted(event_keys, query_keys, side="right") - 1
    found = last >= 0
    found[found] = event_series[last[found]] == query_series[found]
    if not found.any():
        return sums, latest
    at = last[found]
    seconds = event_times.astype(np.float64) / 1e6
    query_seconds = query_times[found].astype(np.float64) / 1e6
    latest[found] = seconds[at]
    starts = np.flatnonzero(np.r_[True, event_series[1:] != event_series[:-1]])
    first_of_series = np.repeat(seconds[starts], np.diff(np.r_[starts, len(seconds)]))
    weights = event_weights.astype(np.float64)
    for column, half_life in enumerate(half_lives):
        running, reference = _running_values(event_series, seconds, weights, first_of_series, float(half_life))
        # To the latest event's time first (a value of about the weights' size), then decayed to the query's time.
        value = running[at] * np.exp2((reference[at] - seconds[at]) / half_life)
        sums[found, column] = value * np.exp2((seconds[at] - query_seconds) / half_life)
    return sums, latest


def _running_values(
    series: np.ndarray, seconds: np.ndarray, weights: np.ndarray, first_of_series: np.ndarray, half_life: float
) -> tuple[np.ndarray, np.ndarray]:
    """(P_k against its block's reference, that reference) for every event."""
    block_seconds = BLOCK_HALF_LIVES * half_life
    block = np.floor((seconds - first_of_series) / block_seconds)
    reference = first_of_series + block * block_seconds
    terms = weights * np.exp2((seconds - reference) / half_life)
    # Blocks: runs of one series and one block number. A sum restarts at each (a cumulative sum across blocks of
    # very different sizes would lose the small ones' digits).
    boundary = np.r_[True, (series[1:] != series[:-1]) | (block[1:] != block[:-1])]
    starts = np.flatnonzero(boundary)
    ends = np.r_[starts[1:], len(seconds)]
    running = np.empty_like(terms)
    carried, previous_total, previous_reference, previous_series = 0.0, 0.0, 0.0, -1
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        own_series = int(series[start])
        own_reference = float(reference[start])
        if own_series == previous_series:
            carried = (previous_total + carried) * float(np.exp2((previous_reference - own_reference) / half_life))
        else:
            carried = 0.0
        block_sums = np.cumsum(terms[start:end])
        running[start:end] = block_sums + carried
        previous_total, previous_reference, previous_series = float(block_sums[-1]), own_reference, own_series
    return running, reference
