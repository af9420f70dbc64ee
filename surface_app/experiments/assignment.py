"""Which variant of an experiment a shopper sees: deterministic, salted per experiment, computed without a read.

A shopper's bucket (0 to 9,999) is a hash of the experiment's own salt and the shopper's assignment unit, so the
same shopper always lands in the same variant of one experiment, while their variant in one experiment says nothing
about another (the canary's unsalted `crc32(user) % 100` gave the same shoppers every canary). Variants own
consecutive ranges of buckets in proportion to their weights.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

BUCKETS = 10_000
SALT_BYTES = 8


@dataclass(frozen=True)
class VariantWeight:
    name: str
    weight: int  # a positive share; the shares need not sum to anything in particular


def salt_new() -> str:
    """A fresh experiment's salt (kept with it for its whole life: a new salt reshuffles every shopper)."""
    return secrets.token_hex(SALT_BYTES)


def bucket_of(*, salt: str, unit: str) -> int:
    """The shopper's bucket in this experiment (0 <= bucket < BUCKETS)."""
    digest = hashlib.blake2b(f"{salt}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def variant_assign(*, salt: str, unit: str, variants: Sequence[VariantWeight]) -> str:
    """The name of the variant whose range of buckets holds the shopper's bucket."""
    bucket = bucket_of(salt=salt, unit=unit)
    bounds = variant_bounds(variants)
    for variant, upper in zip(variants, bounds, strict=True):
        if bucket < upper:
            return variant.name
    return variants[-1].name  # unreachable: the last bound is BUCKETS


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
