"""A shopper's bucket in a salted split: the one hash experiments (`surface_app.experiments.assignment`) and the
model registry's canary (`scoring_app.engine.registry`) both use.

A bucket is a hash of the split's own salt and the shopper's unit, so one shopper's bucket in one split says
nothing about their bucket in another (an unsalted `crc32(user) % 100` gave the same shoppers every canary).
"""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def bucket_of(*, salt: str, unit: str) -> int:
    """The unit's bucket in the split salted `salt` (0 <= bucket < BUCKETS)."""
    digest = hashlib.blake2b(f"{salt}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS
