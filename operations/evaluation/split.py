"""The Microsoft Recommenders stratified splitter (`python_stratified_split`), reproduced exactly.

numpy's global RNG is seeded, one uniform number is drawn per row (in the given row order), rows are sorted by
(group, that number) and ranked within their group; a row goes to the part whose cumulative share of its group,
rounded with numpy rounding (halves to even), its rank falls within.
"""

from __future__ import annotations

import numpy as np

SPLIT_RATIO = 0.75
SPLIT_SEED = 42


def _ranks(*, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's 1-based rank within its group after the random shuffle, and its group's size."""
    # The legacy global RNG on purpose: it is what the reference implementation seeds and draws from.
    np.random.seed(seed)
    draws = np.random.random(len(groups))
    _, codes = np.unique(groups, return_inverse=True)
    order = np.lexsort((draws, codes))
    sorted_codes = codes[order]
    first = np.searchsorted(sorted_codes, sorted_codes, side="left")
    ranks = np.empty(len(groups), dtype=np.int64)
    ranks[order] = np.arange(len(groups)) - first + 1
    return ranks, np.bincount(codes)[codes]


def stratified_split(*, groups: np.ndarray, ratio: float = SPLIT_RATIO, seed: int = SPLIT_SEED) -> np.ndarray:
    """True for the rows of the first part (train): within each group, the first round(ratio * size) rows."""
    ranks, sizes = _ranks(groups=groups, seed=seed)
    return ranks <= np.round(ratio * sizes)


def stratified_folds(*, groups: np.ndarray, folds: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """Fold number (0..folds-1) of each row: the splitter with `folds` equal ratios, so every group is spread
    evenly over the folds."""
    if folds < 2:
        raise ValueError("at least two folds")
    ranks, sizes = _ranks(groups=groups, seed=seed)
    fold = np.zeros(len(groups), dtype=np.int64)
    for boundary in range(1, folds):
        fold += ranks > np.round(boundary / folds * sizes)
    return fold
