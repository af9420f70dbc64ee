from collections import Counter

import pytest
from scipy.stats import chi2_contingency, chisquare

from surface_app.experiments.assignment import (
    BUCKETS,
    VariantWeight,
    bucket_of,
    salt_new,
    variant_assign,
    variant_bounds,
)

SHOPPERS = [f"user-{number}" for number in range(20_000)]
HALVES = [VariantWeight("control", 1), VariantWeight("treatment", 1)]


def test_a_shopper_keeps_their_variant_across_requests():
    salt = salt_new()
    first = [variant_assign(salt=salt, unit=shopper, variants=HALVES) for shopper in SHOPPERS[:500]]
    again = [variant_assign(salt=salt, unit=shopper, variants=HALVES) for shopper in SHOPPERS[:500]]
    assert first == again


def test_the_split_follows_the_weights():
    variants = [VariantWeight("control", 70), VariantWeight("a", 20), VariantWeight("b", 10)]
    counts = Counter(variant_assign(salt="s1", unit=shopper, variants=variants) for shopper in SHOPPERS)
    expected = [len(SHOPPERS) * share for share in (0.7, 0.2, 0.1)]
    assert chisquare([counts["control"], counts["a"], counts["b"]], expected).pvalue > 0.001


def test_two_experiments_assign_independently():
    """The same shoppers, two salts: knowing a shopper's variant in one says nothing of the other."""
    first = [variant_assign(salt="experiment-1", unit=shopper, variants=HALVES) for shopper in SHOPPERS]
    second = [variant_assign(salt="experiment-2", unit=shopper, variants=HALVES) for shopper in SHOPPERS]
    table = Counter(zip(first, second, strict=True))
    contingency = [[table[("control", "control")], table[("control", "treatment")]],
                   [table[("treatment", "control")], table[("treatment", "treatment")]]]  # fmt: skip
    assert chi2_contingency(contingency).pvalue > 0.001
    overlap = sum(1 for a, b in zip(first, second, strict=True) if a == b) / len(SHOPPERS)
    assert 0.47 < overlap < 0.53  # an unsalted hash would give 1.0


def test_the_bounds_end_at_every_bucket():
    assert variant_bounds([VariantWeight("a", 1), VariantWeight("b", 1), VariantWeight("c", 1)]) == [
        3333,
        6667,
        BUCKETS,
    ]
    assert all(0 <= bucket_of(salt="s", unit=shopper) < BUCKETS for shopper in SHOPPERS[:1000])


@pytest.mark.parametrize("variants", [[], [VariantWeight("a", 0)], [VariantWeight("a", 1), VariantWeight("b", -1)]])
def test_weights_must_be_positive(variants):
    with pytest.raises(ValueError):
        variant_bounds(variants)


def test_salts_differ_between_experiments():
    assert len({salt_new() for _ in range(100)}) == 100
