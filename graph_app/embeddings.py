"""Item content features and the vectors made from them.

A new item is retrievable the moment it is created: its hashed content features (title, description,
category, entities, attributes) are projected into the embedding space. Before any training the projection is a
fixed random one (which keeps cosine similarity of the features); after training it is a ridge regression that
maps content features onto the collaborative item factors, so cold items land near the items they resemble.
"""

from __future__ import annotations

import re
import zlib
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings

CONTENT_FEATURE_BUCKETS = 2048
RANDOM_PROJECTION_SEED = 20261125
_TOKEN = re.compile(r"[a-z0-9]+")

FeatureVector = dict[int, float]


@dataclass(frozen=True)
class ItemContent:
    title: str
    description: str = ""
    category: str = ""
    entities: tuple[tuple[str, str, float], ...] = ()  # (kind, external id, weight)
    attributes: Mapping[str, object] = field(default_factory=dict)


def _add(features: FeatureVector, token: str, weight: float) -> None:
    hashed = zlib.crc32(token.encode())
    bucket = hashed % CONTENT_FEATURE_BUCKETS
    # A second hash bit picks the sign, so that colliding tokens cancel out on average instead of adding up.
    sign = 1.0 if (hashed >> 16) & 1 else -1.0
    features[bucket] = features.get(bucket, 0.0) + sign * weight


def content_features(content: ItemContent) -> FeatureVector:
    features: FeatureVector = {}
    for token in _TOKEN.findall(content.title.lower()):
        _add(features, f"w:{token}", 1.0)
    for token in _TOKEN.findall(content.description.lower())[:200]:
        _add(features, f"w:{token}", 0.5)
    if content.category:
        _add(features, f"category:{content.category.lower()}", 2.0)
    for kind, external_id, weight in content.entities:
        _add(features, f"entity:{kind}:{external_id.lower()}", 2.0 * weight)
    for key, value in content.attributes.items():
        if isinstance(value, (str, int, float, bool)):
            _add(features, f"attr:{key}:{str(value).lower()}", 1.0)
    norm = float(np.sqrt(sum(value * value for value in features.values())))
    if norm > 0:
        features = {bucket: value / norm for bucket, value in features.items()}
    return features


def random_projection() -> np.ndarray:
    rng = np.random.default_rng(RANDOM_PROJECTION_SEED)
    dimensions = settings.EMBEDDING_DIMENSIONS
    return (rng.standard_normal((CONTENT_FEATURE_BUCKETS, dimensions)) / np.sqrt(dimensions)).astype(np.float32)


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (matrix / norms).astype(np.float32)


def project(features: FeatureVector, projection: np.ndarray) -> np.ndarray:
    if not features:
        return np.zeros(projection.shape[1], dtype=np.float32)
    buckets = np.fromiter(features.keys(), dtype=np.int64)
    weights = np.fromiter(features.values(), dtype=np.float32)
    vector = weights @ projection[buckets]
    return normalize_rows(vector[None, :])[0]


def feature_matrix(rows: Iterable[FeatureVector]) -> scipy.sparse.csr_matrix:  # noqa: F821
    from scipy import sparse

    # Typed arrays, not lists: a million items' features are tens of millions of numbers.
    indptr, indices, data = array("q", [0]), array("q"), array("f")
    for features in rows:
        indices.extend(features.keys())
        data.extend(features.values())
        indptr.append(len(indices))
    return sparse.csr_matrix(
        (np.array(data, dtype=np.float32), np.array(indices, dtype=np.int64), np.array(indptr, dtype=np.int64)),
        shape=(len(indptr) - 1, CONTENT_FEATURE_BUCKETS),
    )
