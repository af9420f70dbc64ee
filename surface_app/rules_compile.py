"""Compiling placements, rules and caps into the serving snapshot (control plane: the ORM is fine here).

A rule's item condition is evaluated here, once, into the set of catalog items it matches, so serving checks set
membership instead of reading item attributes. Catalog changes bump the configuration version (see
`surface_app.services.surface_config_changed`), so the sets follow the catalog within seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from django.db.models import Q
from django.utils import timezone

from graph_app.interface import item_ids_matching, items_in_stock, model_version_kind
from scoring_app.interface import models_preload
from surface_app.experiments.assignment import VariantWeight, variant_bounds
from surface_app.experiments.models import Experiment
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.serving.caps import CapSpec
from surface_app.serving.experiments import RunningExperiment, Treatment
from surface_app.serving.rules import OPERATORS, CompiledRule, Condition, PlacementConfig, RulesSnapshot

logger = logging.getLogger(__name__)

ITEM_FIELDS = ("category", "price", "brand", "title", "in_stock")


class ConditionError(ValueError):
    """A condition that cannot be compiled; the message says what is wrong, for the console's forms."""


def conditions_parse(raw: Any, *, prefix: str = "") -> tuple[Condition, ...]:
    """A condition or a list of them, as stored on a rule; raises ConditionError naming the problem."""
    if not raw:
        return ()
    entries = raw if isinstance(raw, list) else [raw]
    parsed = []
    for entry in entries:
        if not isinstance(entry, dict) or not {"field", "op", "value"} <= set(entry):
            raise ConditionError('Each condition needs "field", "op" and "value".')
        field_name, op = str(entry["field"]), str(entry["op"])
        if op not in OPERATORS:
            raise ConditionError(f"Unknown operator '{op}'; use one of {', '.join(OPERATORS)}.")
        if prefix and not field_name.startswith(prefix):
            raise ConditionError(f"Audience conditions are on user traits: write '{prefix}<name>'.")
        if not prefix and not (field_name in ITEM_FIELDS or field_name.startswith("attributes.")):
            raise ConditionError(
                f"Unknown item field '{field_name}'; use {', '.join(ITEM_FIELDS)} or attributes.<name>."
            )
        if op == "in" and not isinstance(entry["value"], list):
            raise ConditionError('"in" needs a list of values.')
        parsed.append(Condition(field_name[len(prefix) :] if prefix else field_name, op, entry["value"]))
    return tuple(parsed)


def item_matches(conditions: tuple[Condition, ...]) -> frozenset[str] | None:
    if not conditions:
        return None
    return item_ids_matching(conditions=conditions)


def _caps(rows: list[FrequencyCap]) -> tuple[tuple[CapSpec, ...], int]:
    caps = tuple(
        CapSpec(
            scope=row.scope,
            max_impressions=row.max_impressions,
            window_seconds=row.window_seconds,
            name=row.name,
            # A cap set on one placement counts that placement's impressions; a global one counts them all.
            per_placement=row.placement_id is not None,
        )
        for row in rows
        if row.scope != FrequencyCap.Scope.COOLDOWN
    )
    cooldown = max((row.window_seconds for row in rows if row.scope == FrequencyCap.Scope.COOLDOWN), default=0)
    return caps, cooldown


def rule_compile(rule: BusinessRule) -> CompiledRule:
    """One rule as serving applies it (also for unsaved edits in the console's preview)."""
    return CompiledRule(
        name=rule.name,
        kind=rule.kind,
        priority=rule.priority,
        placement=rule.placement.name if rule.placement else None,
        valid_from=rule.valid_from.timestamp() if rule.valid_from else None,
        valid_until=rule.valid_until.timestamp() if rule.valid_until else None,
        audience=conditions_parse(rule.audience, prefix="traits."),
        matches=item_matches(conditions_parse(rule.condition)),
        factor=float(rule.factor),
        item_ids=tuple(str(item_id) for item_id in rule.item_ids or ()),
        slot=rule.slot,
        campaign=rule.campaign,
        caps_apply=bool(rule.caps_apply),
    )


def rules_snapshot_build() -> RulesSnapshot:
    now = timezone.now()
    caps = list(FrequencyCap.objects.filter(enabled=True))
    global_caps = [cap for cap in caps if cap.placement_id is None]
    placements: dict[str, PlacementConfig] = {}
    for placement in Placement.objects.filter(enabled=True):
        specs, cooldown = _caps([*global_caps, *(cap for cap in caps if cap.placement_id == placement.pk)])
        placements[placement.name] = PlacementConfig(
            name=placement.name,
            context=placement.context,
            size=placement.size,
            sources=tuple(placement.sources or ()),
            scorer=placement.scorer,
            fallbacks=tuple(placement.fallbacks or ()),
            default_items=tuple(placement.default_items or ()),
            deadline_ms=placement.deadline_ms,
            max_per_category=placement.max_per_category,
            max_per_brand=placement.max_per_brand,
            exclude_purchased=placement.exclude_purchased,
            caps=specs,
            cooldown_seconds=cooldown,
        )
    global_specs, global_cooldown = _caps(global_caps)
    compiled = []
    pinned: set[str] = set()
    # Drafts (placements that require review) serve only once approved.
    rules = BusinessRule.objects.filter(enabled=True, status=BusinessRule.Status.PUBLISHED).filter(
        Q(valid_until__isnull=True) | Q(valid_until__gt=now)
    )
    for rule in rules.select_related("placement").order_by("-priority", "-updated_at"):
        try:
            compiled.append(rule_compile(rule))
        except ConditionError:
            continue  # the console refuses these; one saved before a validation change must not stop serving
        if rule.kind == BusinessRule.Kind.PIN:
            pinned.update(str(item_id) for item_id in rule.item_ids or ())
    pinnable = items_in_stock(item_ids=pinned)
    snapshot = RulesSnapshot(
        version=b"", placements=placements, rules=tuple(compiled), pinnable=pinnable, global_caps=global_specs,
        global_cooldown_seconds=global_cooldown,
        caps_retention_seconds=max((cap.window_seconds for cap in caps if cap.scope != "cooldown"), default=0),
    )  # fmt: skip
    return replace(snapshot, experiments=experiments_compile(snapshot=snapshot))


def experiments_compile(*, snapshot: RulesSnapshot) -> dict[str, RunningExperiment]:
    """Each placement's running experiment as serving applies it; the model versions they serve start loading in
    the background. An experiment that cannot be compiled (stored before a validation change) is left out: the
    placement serves as it does today."""
    running: dict[str, RunningExperiment] = {}
    models: dict[str, str] = {}
    for experiment in Experiment.objects.filter(status=Experiment.Status.RUNNING).select_related("placement"):
        try:
            compiled = _experiment_compile(experiment, snapshot.placement(experiment.placement.name))
        except (KeyError, TypeError, ValueError):
            logger.exception("surface.experiment_compile_failed", extra={"experiment_id": experiment.pk})
            continue
        running[experiment.placement.name] = compiled
        models.update({version: kind for kind, version in (t.model for t in compiled.treatments if t.model)})
    if models:
        models_preload(versions=models)
    return running


def _experiment_compile(experiment: Experiment, config: PlacementConfig) -> RunningExperiment:
    variants = list(experiment.variants)
    bounds = variant_bounds([VariantWeight(str(variant["name"]), int(variant["weight"])) for variant in variants])
    treatments = tuple(treatment_compile(treatment=variant["treatment"], config=config) for variant in variants)
    return RunningExperiment(
        id=experiment.pk,
        salt=experiment.salt,
        variants=tuple(str(variant["name"]) for variant in variants),
        bounds=tuple(bounds),
        treatments=treatments,
        rule_sets=tuple(sorted({treatment.rules_of for treatment in treatments if treatment.rules_of})),
    )


def treatment_compile(*, treatment: Mapping[str, Any], config: PlacementConfig) -> Treatment:
    """What a variant's stored treatment changes, resolved once: a config with its sources or first fallback
    replaced, the placement whose rules apply, the model (kind, version) that serves."""
    kind = str(treatment["kind"])
    if kind == "sources":
        return Treatment(kind, config=replace(config, sources=tuple(treatment["sources"])))
    if kind == "rules":
        fallback = treatment.get("fallback")
        chain = config.fallbacks
        if fallback:
            chain = (fallback, *(step for step in chain[1:] if step != fallback))
        return Treatment(kind, config=replace(config, fallbacks=chain), rules_of=treatment.get("rule_set") or None)
    if kind == "model":
        model_kind = model_version_kind(version=treatment["version"])
        if model_kind is None:  # deleted since: the variant serves what the placement serves
            logger.warning("surface.experiment_model_missing", extra={"version": treatment["version"]})
            return Treatment(kind)
        return Treatment(kind, model=(model_kind, str(treatment["version"])))
    return Treatment(kind)
