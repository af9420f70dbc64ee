"""Which variant of an experiment a shopper sees: deterministic, salted per experiment, computed without a read.

A shopper's bucket (0 to 9,999) is a hash of the experiment's own salt and the shopper's assignment unit, so the
same shopper always lands in the same variant of one experiment, while their variant in one experiment says nothing
about another (the canary's unsalted `crc32(user) % 100` gave the same shoppers every canary). Variants own
consecutive ranges of buckets in proportion to their weights. The hash (`personalization.buckets.bucket_of`) is
shared with the model registry's canary.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from personalization.buckets import BUCKETS, bucket_of

SALT_BYTES = 8


__all__ = ["BUCKETS", "VariantWeight", "bucket_of", "salt_new", "variant_assign", "variant_bounds", "variant_index"]


@dataclass(frozen=True)
class VariantWeight:
    name: str
    weight: int  # a positive share; the shares need not sum to anything in particular


def salt_new() -> str:
    """A fresh experiment's salt (kept with it for its whole life: a new salt reshuffles every shopper)."""
    return secrets.token_hex(SALT_BYTES)


def variant_assign(*, salt: str, unit: str, variants: Sequence[VariantWeight]) -> str:
    """The name of the variant whose range of buckets holds the shopper's bucket."""
    return variants[variant_index(salt=salt, unit=unit, bounds=variant_bounds(variants))].name


def variant_index(*, salt: str, unit: str, bounds: Sequence[int]) -> int:
    """The index of the variant whose range holds the unit's bucket, given the variants' precomputed bounds
    (`variant_bounds`): what serving runs per request, a hash and a walk over at most five bounds."""
    bucket = bucket_of(salt=salt, unit=unit)
    for index, upper in enumerate(bounds):
        if bucket < upper:
            return index
    return len(bounds) - 1  # unreachable: the last bound is BUCKETS


def variant_bounds(variants: Sequence[VariantWeight]) -> list[int]:
    """Each variant's exclusive upper bucket, in order: its weight's share of BUCKETS, rounded so that they end at
    BUCKETS exactly."""
    if not variants:
        raise ValueError("an experiment needs at least one variant")
    if any(variant.weight <= 0 for variant in variants):
        raise ValueError("variant weights must be positive")
    total = sum(variant.weight for variant in variants)
    bounds, running = [], 0
    for variant in variants:
        running += variant.weight
        bounds.append(round(BUCKETS * running / total))
    return bounds
