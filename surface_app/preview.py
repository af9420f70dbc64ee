"""Preview and explain for the console (control plane): the slate a user would be served now, or with unsaved rule
edits, or for a made-up profile, side by side, and for each item where it came from and why it is where it is.

Nothing is recorded: no impression, no cap count, no last slate (`surface_app.serving.slates.slate_preview`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from graph_app.interface import features_fetch
from personalization.candidates import Candidate
from scoring_app.interface import RANKER, ranker_inputs, serving_model
from surface_app.models import BusinessRule
from surface_app.rules_compile import rule_compile, rules_snapshot_build
from surface_app.serving.slates import PreviewOptions, Slate, slate_preview

TOP_CONTRIBUTIONS = 3


@dataclass(frozen=True)
class PreviewResult:
    placement: str
    path: str
    model_version: str | None
    confidence: float
    degraded: list[str]
    # The slate's items, each with its slot and (ranker) the top feature contributions to its score.
    items: list[Candidate]
    # Items the rules or caps removed, with why ("filter:No alcohol for minors", "cap:3 a day", "cooldown"...).
    removed: dict[str, str]
    # The shopper's experiment variant ({"id", "variant"}), or None outside one.
    experiment: dict[str, object] | None = None


def _contributions(user_key: str, placement: str, item_ids: list[str]) -> dict[str, list[tuple[str, float]]]:
    ranker = serving_model(RANKER, user_key=user_key)
    if ranker is None or not item_ids:
        return {}
    registry_model = ranker.model
    features = features_fetch(user_key=user_key, item_ids=item_ids, placement=placement, now=time.time())
    contributions = np.asarray(
        registry_model.booster.predict(ranker_inputs(registry_model, features), pred_contrib=True, num_threads=1)
    )
    names = registry_model.feature_names
    explained: dict[str, list[tuple[str, float]]] = {}
    for row, item_id in enumerate(item_ids):
        values = contributions[row, : len(names)]  # the last column is the bias
        order = np.argsort(-np.abs(values))[:TOP_CONTRIBUTIONS]
        explained[item_id] = [(names[index], round(float(values[index]), 4)) for index in order if values[index]]
    return explained


def _result(slate: Slate, removed: dict[str, str], user_key: str) -> PreviewResult:
    item_ids = [item.item_id for item in slate.items]
    contributions = _contributions(user_key, slate.placement, item_ids) if slate.path == "ranker" else {}
    for slot, item in enumerate(slate.items, start=1):  # the preview's own slate: its items are filled in
        item.slot = slot
        item.contributions = contributions.get(item.item_id, [])
    return PreviewResult(
        placement=slate.placement,
        path=slate.path,
        model_version=slate.model_version,
        confidence=slate.confidence,
        degraded=list(slate.degraded),
        items=slate.items,
        removed=dict(removed),
        experiment=slate.experiment.as_dict() if slate.experiment is not None else None,
    )


def preview_explain(
    *,
    placement: str,
    user_id: str = "",
    traits: dict[str, Any] | None = None,
    recent_items: list[str] | None = None,
    rule_edits: list[BusinessRule] | None = None,
    k: int | None = None,
) -> tuple[PreviewResult, PreviewResult]:
    """(the slate as served now, the slate with `rule_edits` applied) for a user, or for a made-up profile (no
    user id: `traits` and `recent_items` describe it). `rule_edits` are unsaved rules (new ones have no pk; an edit
    of a saved rule keeps its pk and replaces it)."""
    user_key = user_id or f"preview:{uuid.uuid4().hex}"
    context = tuple(recent_items or ())
    current = rules_snapshot_build()
    now_options = PreviewOptions(snapshot=current, traits=traits)
    served = slate_preview(user_key=user_key, placement=placement, k=k, context_items=context, options=now_options)
    served_result = _result(served, now_options.removed, user_key)
    if not rule_edits:
        return served_result, served_result
    replaced = {rule.pk for rule in rule_edits if rule.pk}
    saved = [
        rule_compile(rule)
        for rule in BusinessRule.objects.filter(enabled=True).exclude(pk__in=replaced).select_related("placement")
    ]
    edited = [rule_compile(rule) for rule in rule_edits if rule.enabled]
    rules = sorted([*saved, *edited], key=lambda compiled: -compiled.priority)
    pinnable = current.pinnable | {
        compiled.item_ids[0] for compiled in edited if compiled.kind == "pin" and compiled.item_ids
    }
    edited_snapshot = replace(current, rules=tuple(rules), pinnable=frozenset(pinnable))
    edit_options = PreviewOptions(snapshot=edited_snapshot, traits=traits)
    with_edits = slate_preview(user_key=user_key, placement=placement, k=k, context_items=context, options=edit_options)
    return served_result, _result(with_edits, edit_options.removed, user_key)
