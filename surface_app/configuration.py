"""Writes to the Surface configuration (placements, rules, caps), and how serving learns of them.

Every change bumps one version in Redis after commit; each serving process reads it in the round trip every
request already makes and rebuilds its rules snapshot in the background (`surface_app.serving.rules`). Open
WebSocket shelves of the placement are told to re-serve.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Model, Q

from graph_app.interface import item_attributes_unknown
from graph_app.interface import items_unknown as graph_items_unknown
from personalization import redis_keys
from personalization.redis_client import get_control_redis
from surface_app.condition_checks import condition_value_problems
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.rules_compile import ConditionError, conditions_parse
from surface_app.services import shelves_placement_changed

logger = logging.getLogger(__name__)


def surface_config_changed(*, placement: str | None = None) -> None:
    """After commit: serving rebuilds its snapshot; open shelves of the placement (None: all) re-serve."""

    def publish() -> None:
        try:
            version = get_control_redis().incr(redis_keys.SURFACE_CONFIG_VERSION)
        except Exception:
            logger.exception("surface.config_version_failed")
            return
        try:
            shelves_placement_changed(placement=placement, version=str(version).encode())
        except Exception:
            logger.exception("surface.shelves_notify_failed")

    transaction.on_commit(publish)


def _attributes_unknown(conditions: Any) -> list[str]:
    """`attributes.<name>` conditions whose name no item in the catalog has (a typo matches nothing, silently)."""
    names = sorted(
        {condition.field.split(".")[1] for condition in conditions if condition.field.startswith("attributes.")}
    )
    return item_attributes_unknown(names=names)


def _window_text(rule: BusinessRule) -> str:
    start = f"from {rule.valid_from:%Y-%m-%d %H:%M}" if rule.valid_from else "from the start"
    end = f"until {rule.valid_until:%Y-%m-%d %H:%M}" if rule.valid_until else "with no end"
    return f"{start} {end}"


def _pin_conflicts(rule: BusinessRule) -> list[BusinessRule]:
    """Enabled pins of other campaigns on the same slot of the same placement (a pin without placement is on
    every placement) whose validity windows overlap this one's."""
    others = BusinessRule.objects.filter(
        kind=BusinessRule.Kind.PIN, enabled=True, slot=rule.slot, status=BusinessRule.Status.PUBLISHED
    ).exclude(campaign=rule.campaign)
    if rule.pk:
        others = others.exclude(pk=rule.pk)
    if rule.placement_id is not None:
        others = others.filter(Q(placement_id=rule.placement_id) | Q(placement__isnull=True))
    if rule.valid_until:
        others = others.filter(Q(valid_from__isnull=True) | Q(valid_from__lt=rule.valid_until))
    if rule.valid_from:
        others = others.filter(Q(valid_until__isnull=True) | Q(valid_until__gt=rule.valid_from))
    return list(others.select_related("placement").order_by("-priority", "-updated_at"))


def rule_validate(*, rule: BusinessRule) -> None:
    """Messages a merchandiser understands, by field. The one place rules are validated: the admin's form, the
    save service and the CSV import all call it."""
    errors: dict[str, str] = {}
    try:
        conditions = conditions_parse(rule.condition)
        unknown = _attributes_unknown(conditions)
        problems: list[str] = []
        if unknown:
            names = ", ".join(f"'{name}'" for name in unknown)
            problems.append(
                f"No item in the catalog has the attribute {names}: check the spelling of attributes.<name> "
                "(a rule on an unknown attribute matches nothing)."
            )
        # Like an unknown attribute, a value no item has (a case typo above all) is refused, naming the spelling.
        missing = condition_value_problems(conditions=conditions, skip_attributes=unknown)
        if missing:
            problems.append(
                " ".join(problem.message for problem in missing)
                + " Values are compared exactly, case included: a rule on a value no item has matches nothing."
            )
        if problems:
            errors["condition"] = " ".join(problems)
    except ConditionError as error:
        errors["condition"] = str(error)
    try:
        conditions_parse(rule.audience, prefix="traits.")
    except ConditionError as error:
        errors["audience"] = str(error)
    placement = rule.placement if rule.placement_id is not None else None
    if rule.kind == BusinessRule.Kind.PIN:
        if not rule.item_ids or len(rule.item_ids) != 1:
            errors["item_ids"] = "A pin needs exactly one item id."
        if not rule.slot:
            errors["slot"] = "A pin needs a slot (1 is the first)."
        elif placement is not None and rule.slot > placement.size:
            errors["slot"] = (
                f"Slot {rule.slot} is beyond the placement '{placement.name}', which has {placement.size} slots."
            )
        elif rule.enabled and (conflicts := _pin_conflicts(rule)):
            other = conflicts[0]
            where = f"placement '{other.placement.name}'" if other.placement else "every placement"
            errors["slot"] = (
                f"Slot {rule.slot} is already pinned by campaign '{other.campaign or '(none)'}' (rule '{other.name}', "
                f"on {where}, {_window_text(other)}) at the same time: choose another slot, change the dates so "
                "they do not overlap, or disable one of them."
            )
    if rule.kind == BusinessRule.Kind.BLOCK and not rule.item_ids:
        errors["item_ids"] = "A block list needs at least one item id."
    if rule.kind in (BusinessRule.Kind.BOOST, BusinessRule.Kind.BURY) and rule.factor <= 1:
        errors["factor"] = "Boost and bury factors are above 1 (a bury divides by it)."
    if rule.valid_from and rule.valid_until and rule.valid_until <= rule.valid_from:
        errors["valid_until"] = "The rule must end after it starts."
    if errors:
        raise ValidationError(errors)


def items_unknown(*, item_ids: list[str]) -> list[str]:
    """Which of these item ids the catalog does not have (for default lists and pins, named back to the user)."""
    return graph_items_unknown(item_ids=item_ids)


def cap_validate(*, cap: FrequencyCap) -> None:
    """The cap's own messages (the model's validators say the same in less merchandiser-friendly words)."""
    errors: dict[str, str] = {}
    if cap.window_seconds is not None and cap.window_seconds < 1:
        errors["window_seconds"] = "The window must be at least one second: a cap over a zero window counts nothing."
    if cap.max_impressions is not None and cap.max_impressions < 1 and cap.scope != FrequencyCap.Scope.COOLDOWN:
        errors["max_impressions"] = "At least one impression: to hide something for good, use a block or filter rule."
    if errors:
        raise ValidationError(errors)


def _concrete(obj: Any) -> Any:
    """The console's proxies (pins, fallback lists) are saved as the model they stand for: its history records them."""
    if obj._meta.proxy:
        obj.__class__ = obj._meta.concrete_model
    return obj


def rule_draft_mark(*, rule: BusinessRule, user: Any = None) -> None:
    """A change to a rule of a placement that requires review is a draft of its author: it does not serve until
    another user with the publish permission approves it (`rule_publish`); elsewhere a rule is published at once."""
    if rule.placement_id is not None and rule.placement.requires_review:
        rule.status = BusinessRule.Status.DRAFT
        rule.drafted_by = user if user is not None and user.is_authenticated else None
        rule.published_by = None
    else:
        rule.status = BusinessRule.Status.PUBLISHED


@transaction.atomic
def rule_save(*, rule: BusinessRule, user: Any = None) -> BusinessRule:
    rule = _concrete(rule)
    rule_draft_mark(rule=rule, user=user)
    rule.full_clean()
    rule_validate(rule=rule)
    rule.save()
    surface_config_changed(placement=rule.placement.name if rule.placement else None)
    return rule


@transaction.atomic
def rule_publish(*, rule: BusinessRule, user: Any) -> BusinessRule:
    """Approves a draft: checked again (the catalog or other campaigns may have changed since), then it serves."""
    rule = _concrete(rule)
    if not user.has_perm("surface_app.publish_rule"):
        raise ValidationError("Publishing needs the permission to approve rules.")
    if rule.status != BusinessRule.Status.DRAFT:
        raise ValidationError(f"'{rule.name}' is not a draft: nothing to approve.")
    if rule.drafted_by_id is not None and rule.drafted_by_id == user.pk:
        raise ValidationError(f"'{rule.name}': another user must approve the change you drafted.")
    rule_validate(rule=rule)
    rule.status, rule.published_by = BusinessRule.Status.PUBLISHED, user
    rule._change_reason = "Approved and published"  # type: ignore[attr-defined]
    rule.save()
    surface_config_changed(placement=rule.placement.name if rule.placement else None)
    return rule


@transaction.atomic
def rule_delete(*, rule: BusinessRule) -> None:
    rule = _concrete(rule)
    placement = rule.placement.name if rule.placement else None
    rule.delete()
    surface_config_changed(placement=placement)


@transaction.atomic
def placement_save(*, placement: Placement) -> Placement:
    placement = _concrete(placement)
    placement.full_clean()
    placement.save()
    surface_config_changed(placement=placement.name)
    return placement


@transaction.atomic
def placement_delete(*, placement: Placement) -> None:
    placement = _concrete(placement)
    name = placement.name
    placement.delete()
    surface_config_changed(placement=name)


@transaction.atomic
def cap_save(*, cap: FrequencyCap) -> FrequencyCap:
    cap_validate(cap=cap)
    cap.full_clean()
    cap.save()
    surface_config_changed(placement=cap.placement.name if cap.placement else None)
    return cap


@transaction.atomic
def cap_delete(*, cap: FrequencyCap) -> None:
    placement = cap.placement.name if cap.placement else None
    cap.delete()
    surface_config_changed(placement=placement)


@transaction.atomic
def history_revert(*, record: Any, user: Any = None) -> Model:
    """Makes a recorded version (a django-simple-history record of a placement, rule or cap) current again, through
    the same validation and version bump as an edit; the revert is itself recorded, with its reason."""
    instance = record.instance
    # An update of the row when it still exists (a deleted one is created again, with its id).
    instance._state.adding = not type(instance).objects.filter(pk=instance.pk).exists()
    instance._change_reason = f"Reverted to the version of {record.history_date:%Y-%m-%d %H:%M:%S} UTC"
    if isinstance(instance, BusinessRule):
        return rule_save(rule=instance, user=user)
    if isinstance(instance, Placement):
        return placement_save(placement=instance)
    if isinstance(instance, FrequencyCap):
        return cap_save(cap=instance)
    raise TypeError(f"No revert for {type(instance).__name__}")


DEFAULT_PLACEMENTS = (
    {"name": "home", "title": "Recommended for you", "context": "user", "size": 10, "max_per_category": 3},
    {"name": "product_page", "title": "Similar items", "context": "item", "size": 6},
    {"name": "cart", "title": "Goes well with your cart", "context": "cart", "size": 6},
)


def surface_defaults_install() -> int:
    """First run: the usual placements and a one-day cool-down after a hide or skip. Never overwrites what staff
    changed (only creates what is missing); returns how many were created."""
    created = 0
    for fields in DEFAULT_PLACEMENTS:
        if not Placement.objects.filter(name=fields["name"]).exists():
            placement_save(placement=Placement(**fields))
            created += 1
    if not FrequencyCap.objects.exists():
        cap_save(cap=FrequencyCap(name="A day after a hide or skip", scope=FrequencyCap.Scope.COOLDOWN,
                                  window_seconds=86400))  # fmt: skip
        created += 1
    return created
