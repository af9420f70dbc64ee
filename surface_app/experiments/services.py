"""Writes of experiments: create (running or draft), start a draft, stop. Every input is checked here, whoever
calls (the API, later the console), and refused with an ApplicationError naming the field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status

from graph_app.interface import model_version_kind
from personalization.errors import ApplicationError
from surface_app.configuration import surface_config_changed
from surface_app.experiments.assignment import salt_new
from surface_app.experiments.models import Experiment
from surface_app.models import FALLBACKS, RETRIEVAL_SOURCES, Placement

VARIANTS_MIN = 2
VARIANTS_MAX = 5
NAME_MAX_LENGTH = 200
VARIANT_NAME_MAX_LENGTH = 50
WEIGHT_MAX = 10_000  # as many as assignment has buckets: a finer share could not be served
TREATMENT_KINDS = ("current", "model", "sources", "rules", "popularity")
GUARDRAILS = ("serving_p99_ms", "degraded_rate")

Errors = dict[str, list[str]]


def _invalid(errors: Errors) -> ApplicationError:
    field, messages = next(iter(errors.items()))
    return ApplicationError(f"{field}: {messages[0]}", errors=errors)


def _conflict(placement: str) -> ApplicationError:
    return ApplicationError(
        f"An experiment is already running on placement '{placement}': stop it first.",
        code="conflict",
        errors={"placement": ["An experiment is already running on this placement."]},
        status_code=status.HTTP_409_CONFLICT,
    )


def _text_problem(value: Any, *, max_length: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "A non-empty text."
    if len(value) > max_length or "\x00" in value:
        return f"At most {max_length} characters, no NUL."
    return None


def _treatment_problems(treatment: Any, prefix: str) -> tuple[dict[str, Any], Errors]:
    """The treatment as stored (its kind and the fields that kind takes), or the problems of each field."""
    if not isinstance(treatment, Mapping):
        return {}, {prefix: ['An object {"kind": ...}.']}
    kind = treatment.get("kind")
    if kind not in TREATMENT_KINDS:
        return {}, {f"{prefix}.kind": [f"Unknown treatment kind {kind!r}: one of {', '.join(TREATMENT_KINDS)}."]}
    if kind == "model":
        version = treatment.get("version")
        if not isinstance(version, str) or not version or _text_problem(version, max_length=60):
            return {}, {f"{prefix}.version": ["A model treatment needs the registered model version to serve."]}
        return _model_treatment(version, prefix)
    if kind == "sources":
        sources = treatment.get("sources")
        if not isinstance(sources, list) or not sources:
            return {}, {f"{prefix}.sources": ["A sources treatment needs a non-empty list of retrieval sources."]}
        unknown = [str(source) for source in sources if source not in RETRIEVAL_SOURCES]
        if unknown:
            known = ", ".join(RETRIEVAL_SOURCES)
            return {}, {f"{prefix}.sources": [f"Unknown retrieval sources: {', '.join(unknown)} (known: {known})."]}
        return {"kind": kind, "sources": list(dict.fromkeys(sources))}, {}
    if kind == "rules":
        return _rules_treatment(treatment, prefix)
    return {"kind": kind}, {}


# Why an embeddings version cannot be an experiment's treatment (see the README's experiments section).
EMBEDDINGS_REFUSED = (
    "Embeddings versions cannot be served side by side: the items' vectors in the catalog's vector index, and the "
    "nearest lists built from them, are those of the active version only. Compare embeddings offline, or through "
    "the rankers trained on them."
)


def _model_treatment(version: str, prefix: str) -> tuple[dict[str, Any], Errors]:
    kind = model_version_kind(version=version)
    if kind is None:
        return {}, {f"{prefix}.version": [f"No registered model version '{version}'."]}
    if kind == "embeddings":
        return {}, {f"{prefix}.version": [f"'{version}' is an embeddings version. {EMBEDDINGS_REFUSED}"]}
    return {"kind": "model", "version": version}, {}


def _rules_treatment(treatment: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], Errors]:
    rule_set, fallback = treatment.get("rule_set"), treatment.get("fallback")
    if rule_set is None and fallback is None:
        return {}, {f"{prefix}.rule_set": ['A rules treatment needs "rule_set" or "fallback".']}
    stored: dict[str, Any] = {"kind": "rules"}
    if rule_set is not None:
        problem = _text_problem(rule_set, max_length=NAME_MAX_LENGTH)
        if not problem and not Placement.objects.filter(name=rule_set).exists():
            problem = f"No placement named {rule_set!r}: build the alternative rules on a placement (one not served)."
        if problem:
            return {}, {f"{prefix}.rule_set": [problem]}
        stored["rule_set"] = rule_set
    if fallback is not None:
        if fallback not in FALLBACKS:
            return {}, {f"{prefix}.fallback": [f"Unknown fallback {fallback!r}: one of {', '.join(FALLBACKS)}."]}
        stored["fallback"] = fallback
    return stored, {}


def _variant_problems(variant: Any, prefix: str) -> tuple[dict[str, Any], Errors]:
    if not isinstance(variant, Mapping):
        return {}, {prefix: ['An object {"name", "weight", "treatment"}.']}
    errors: Errors = {}
    problem = _text_problem(variant.get("name"), max_length=VARIANT_NAME_MAX_LENGTH)
    if problem:
        errors[f"{prefix}.name"] = [problem]
    weight = variant.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= WEIGHT_MAX:
        errors[f"{prefix}.weight"] = [f"A positive whole number, at most {WEIGHT_MAX}."]
    treatment, treatment_errors = _treatment_problems(variant.get("treatment"), f"{prefix}.treatment")
    errors.update(treatment_errors)
    return {"name": variant.get("name"), "weight": weight, "treatment": treatment}, errors


def variants_validate(*, variants: Any) -> list[dict[str, Any]]:
    """The variants as stored, or an ApplicationError naming each refused field (`variants.1.weight`, ...)."""
    if not isinstance(variants, Sequence) or isinstance(variants, str):
        raise _invalid({"variants": ["A list of variants."]})
    if not VARIANTS_MIN <= len(variants) <= VARIANTS_MAX:
        raise _invalid({"variants": [f"From {VARIANTS_MIN} to {VARIANTS_MAX} variants ({len(variants)} given)."]})
    stored, errors = [], {}
    for index, variant in enumerate(variants):
        value, problems = _variant_problems(variant, f"variants.{index}")
        stored.append(value)
        errors.update(problems)
    if errors:
        raise _invalid(errors)
    names = [variant["name"] for variant in stored]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise _invalid({"variants": [f"Variant names must be unique: {', '.join(duplicates)} repeated."]})
    return stored


def guardrails_validate(*, guardrails: Mapping[str, Any] | None) -> dict[str, float | None]:
    """{"serving_p99_ms": ms > 0 or None, "degraded_rate": 0 < share <= 1 or None}."""
    guardrails = guardrails or {}
    if not isinstance(guardrails, Mapping):
        raise _invalid({"guardrails": ["An object {serving_p99_ms, degraded_rate}."]})
    errors: Errors = {}
    unknown = sorted(set(guardrails) - set(GUARDRAILS))
    if unknown:
        errors["guardrails"] = [f"Unknown guardrails: {', '.join(map(str, unknown))}."]
    values: dict[str, float | None] = {}
    for name, upper in (("serving_p99_ms", None), ("degraded_rate", 1.0)):
        value = guardrails.get(name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        if value is not None and (not number or value <= 0 or (upper is not None and value > upper)):
            errors[f"guardrails.{name}"] = ["A positive number" + (f" at most {upper:g}." if upper else ".")]
        values[name] = None if value is None else float(value)
    if errors:
        raise _invalid(errors)
    return values


def _placement_locked(name: Any) -> Placement:
    """The placement, its row locked so that two experiments cannot start on it at once."""
    placement = Placement.objects.select_for_update().filter(name=name).first() if isinstance(name, str) else None
    if placement is None:
        raise _invalid({"placement": [f"No placement named {name!r}."]})
    return placement


def _running_check(placement: Placement, *, excluding: int | None = None) -> None:
    running = Experiment.objects.filter(placement=placement, status=Experiment.Status.RUNNING).exclude(pk=excluding)
    if running.exists():
        raise _conflict(placement.name)


def _save(experiment: Experiment, *, placement: str) -> Experiment:
    """Save in a savepoint: the partial unique index refuses a second running experiment that slipped past the
    check (a placement renamed or locked elsewhere), as the same 409."""
    try:
        with transaction.atomic():
            experiment.save()
    except IntegrityError as error:
        if "experiment_one_running_per_placement" in str(error):
            raise _conflict(placement) from error
        raise
    return experiment


@transaction.atomic
def experiment_create(
    *,
    name: str,
    placement: str,
    primary_metric: str,
    variants: Sequence[Mapping[str, Any]],
    guardrails: Mapping[str, Any] | None = None,
    start: bool = True,
) -> Experiment:
    """A new experiment on the placement (by name), running at once unless `start=False` (a draft)."""
    problem = _text_problem(name, max_length=NAME_MAX_LENGTH)
    if problem:
        raise _invalid({"name": [problem]})
    if primary_metric not in Experiment.Metric.values:
        known = ", ".join(Experiment.Metric.values)
        raise _invalid({"primary_metric": [f"Unknown metric {primary_metric!r}: one of {known}."]})
    stored_variants = variants_validate(variants=variants)
    limits = guardrails_validate(guardrails=guardrails)
    placement_row = _placement_locked(placement)
    if start:
        _running_check(placement_row)
    now = timezone.now()
    experiment = Experiment(
        name=name,
        placement=placement_row,
        primary_metric=primary_metric,
        variants=stored_variants,
        guardrail_p99_ms=limits["serving_p99_ms"],
        guardrail_degraded_rate=limits["degraded_rate"],
        status=Experiment.Status.RUNNING if start else Experiment.Status.DRAFT,
        salt=salt_new(),
        started_at=now if start else None,
    )
    saved = _save(experiment, placement=placement_row.name)
    if start:
        surface_config_changed(placement=placement_row.name)  # serving compiles it into its snapshot
    return saved


def _locked(experiment_id: int) -> Experiment:
    experiment = Experiment.objects.select_for_update().select_related("placement").filter(pk=experiment_id).first()
    if experiment is None:
        raise ApplicationError(
            f"No experiment with id {experiment_id}.", code="not_found", status_code=status.HTTP_404_NOT_FOUND
        )
    return experiment


@transaction.atomic
def experiment_start(*, experiment_id: int) -> Experiment:
    """Start a draft (409 while another experiment runs on its placement). A running one stays as it is; a stopped
    one cannot run again (its shoppers' results would mix two periods): 400 naming `status`."""
    experiment = _locked(experiment_id)
    if experiment.status == Experiment.Status.RUNNING:
        return experiment
    if experiment.status == Experiment.Status.STOPPED:
        raise _invalid({"status": ["A stopped experiment cannot start again: create a new one."]})
    placement = Placement.objects.select_for_update().get(pk=experiment.placement_id)
    _running_check(placement, excluding=experiment.pk)
    experiment.status = Experiment.Status.RUNNING
    experiment.started_at = timezone.now()
    saved = _save(experiment, placement=placement.name)
    surface_config_changed(placement=placement.name)
    return saved


@transaction.atomic
def experiment_stop(*, experiment_id: int) -> Experiment:
    """Stop the experiment (a draft too: it will never run). Stopping a stopped one changes nothing."""
    experiment = _locked(experiment_id)
    if experiment.status != Experiment.Status.STOPPED:
        was_running = experiment.status == Experiment.Status.RUNNING
        experiment.status = Experiment.Status.STOPPED
        experiment.stopped_at = timezone.now()
        experiment.save(update_fields=["status", "stopped_at"])
        if was_running:
            surface_config_changed(placement=experiment.placement.name)
    return experiment
