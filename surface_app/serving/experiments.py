"""Running experiments as serving applies them (hot path: no database read, no allocation beyond the hash).

The rules snapshot (`surface_app.serving.rules.RulesSnapshot`) holds each placement's running experiment, compiled
by `surface_app.rules_compile`: its id and salt, its variants in order with their precomputed bucket bounds, and
each variant's treatment with what it changes already resolved (a placement config with its sources or fallbacks
replaced, the placement whose rules apply, the model version that serves). A request hashes its shopper's
assignment unit into a bucket (`surface_app.experiments.assignment.variant_index`) and takes that variant.

Treatments:
- `current`: the placement as it serves today.
- `popularity`: no personalization: the placement's popular items (no retrieval, no ranker, no bandit); rules,
  caps and fallbacks still apply; the slate's path is "popularity".
- `sources`: the placement's retrieval sources replaced by the treatment's.
- `model`: a registered ranker or bandit version serves in place of the active one of its kind.
- `rules`: the rules of another placement (`rule_set`) apply instead of the placement's own, and/or `fallback`
  replaces the first step of the placement's fallback chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from surface_app.experiments.assignment import variant_index

if TYPE_CHECKING:
    from surface_app.serving.rules import PlacementConfig

PATH_POPULARITY = "popularity"


@dataclass(frozen=True)
class Treatment:
    kind: str
    # The placement's config as this variant serves it (sources or fallbacks replaced); None: the placement's own.
    config: PlacementConfig | None = None
    # The placement whose rules apply (None: the placement's own).
    rules_of: str | None = None
    # (kind, version) of the model that serves in place of the active one of its kind.
    model: tuple[str, str] | None = None

    @property
    def popularity(self) -> bool:
        return self.kind == "popularity"


@dataclass(frozen=True)
class RunningExperiment:
    id: int
    salt: str
    variants: tuple[str, ...]  # names, in order
    bounds: tuple[int, ...]  # each variant's exclusive upper bucket (`assignment.variant_bounds`)
    treatments: tuple[Treatment, ...]
    # The placements whose rules a rules treatment applies (their pins' items are read with the request's state).
    rule_sets: tuple[str, ...] = ()

    def assign(self, unit: str) -> Assignment:
        index = variant_index(salt=self.salt, unit=unit, bounds=self.bounds)
        return Assignment(self.id, self.variants[index], unit, self.treatments[index])


class Assignment(NamedTuple):
    """A request's variant: what the slate answers ({"id", "variant"}) and logs, and the treatment it gets. A
    named tuple: built once a request in the hot path, where a frozen dataclass's constructor costs microseconds."""

    experiment_id: int
    variant: str
    unit: str
    treatment: Treatment

    def as_dict(self) -> dict[str, object]:
        return {"id": self.experiment_id, "variant": self.variant}

    def logged(self) -> dict[str, object]:
        """What the impression log keeps: the slate's answer and the unit (the shopper the results count)."""
        return {"id": self.experiment_id, "variant": self.variant, "unit": self.unit}
