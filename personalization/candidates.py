"""The one type of an item on the hot path, from retrieval to the response (and the console's preview).

Retrieval builds it, Score fills in its score, propensity and entity keys, Surface its facts, rules, pin and
campaign, the preview its slot and contributions: each layer sets what it adds on the same object, so there is no
converter between layers. It lives in the core because Score builds it and Surface (and the console) read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Candidate:
    """One item and what the layers found of it. A request builds hundreds: the five fields every retrieval source
    gives are slots (faster to read than the named tuple it replaces; `candidate_new` builds one as fast); what
    later layers add is a class-level default until a layer sets it on the item (in the item's own dict, made only
    then). A layer fills in the items it owns: Score copies the few it returns, Surface fills those."""

    __slots__ = ("__dict__", "explanation", "item_id", "score", "source", "sources")

    item_id: str
    score: float
    # The retrieval source that found the item first, and every source that did (provenance; () until merged).
    source: str
    explanation: str
    sources: tuple[str, ...]

    # Score: when the contextual bandit chose the item, the probability it had of being chosen.
    propensity: float | None = None
    # Score: when the ranker's logging policy placed the item (`scoring_app.engine.ranking_exploration`), its slot in
    # the ranker's draw and its probability of being there (what off-policy evaluation of another ranker divides by).
    logging_slot: int | None = None
    logging_propensity: float | None = None
    # Score: the item's entity keys as the feature read found them ("category:x|brand:y"; b"": none; None: not
    # read), so that the Surface's rules and caps need not read them again.
    entity_payload: bytes | None = None
    # Surface: the item's category, brand and entity keys, for rules, diversity and caps.
    category: str = ""
    brand: str = ""
    entities: tuple[str, ...] = ()
    # Surface: the rules that touched the item (a list while the rules add to it, a tuple once on the slate).
    rules: Sequence[str] = ()
    pinned_slot: int | None = None
    campaign: str = ""
    # The console's preview: the item's slot (1 is the first) and the ranker's top feature contributions.
    slot: int = 0
    contributions: Sequence[tuple[str, float]] = ()

    def __init__(
        self,
        item_id: str,
        score: float,
        source: str,
        explanation: str,
        sources: tuple[str, ...] = (),
        propensity: float | None = None,
        **added: Any,
    ) -> None:
        self.item_id = item_id
        self.score = score
        self.source = source
        self.explanation = explanation
        self.sources = sources
        if propensity is not None:
            self.propensity = propensity
        if added:
            self.__dict__.update(added)

    def copied(self) -> Candidate:
        """A copy to fill in apart from the original (which its owner keeps: a candidate set scored again, a
        remembered slate)."""
        copy = candidate_new(self.item_id, self.score, self.source, self.explanation, self.sources)
        added = self.__dict__
        if added:
            copy.__dict__.update(added)
        return copy

    def retrieved(self) -> dict[str, object]:
        """What retrieval gave, by name (the similar-items API's shape)."""
        return {
            "item_id": self.item_id, "score": self.score, "source": self.source, "explanation": self.explanation,
            "sources": self.sources,
        }  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Candidate):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable: compared by value, not hashed

    def __repr__(self) -> str:
        added = "".join(f", {name}={value!r}" for name, value in sorted(self.__dict__.items()))
        return (
            f"Candidate({self.item_id!r}, {self.score!r}, {self.source!r}, {self.explanation!r}, {self.sources!r}"
            f"{added})"
        )

    def _fields(self) -> tuple[Any, ...]:
        return (self.item_id, self.score, self.source, self.explanation, self.sources, self.__dict__)


_object_new = object.__new__


def candidate_new(item_id: str, score: float, source: str, explanation: str, sources: tuple[str, ...]) -> Candidate:
    """`Candidate(...)` of the five retrieval fields, for loops that build hundreds: without the constructor's
    optional arguments, it costs what building the named tuple it replaces did (half the constructor's cost)."""
    candidate: Candidate = _object_new(Candidate)
    candidate.item_id = item_id
    candidate.score = score
    candidate.source = source
    candidate.explanation = explanation
    candidate.sources = sources
    return candidate
