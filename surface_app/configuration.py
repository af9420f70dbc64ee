"""Writes to the Surface configuration (placements, rules, caps), and how serving learns of them.

Every change bumps one version in Redis after commit; each serving process reads it in the round trip every
request already makes and rebuilds its rules snapshot in the background (`surface_app.serving.rules`). Open
WebSocket shelves of the placement are told to re-serve.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from personalization.redis_client import get_control_redis
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.rules_compile import ConditionError, conditions_parse
from surface_app.serving.slates import CONFIG_VERSION_KEY

logger = logging.getLogger(__name__)


def surface_config_changed(*, placement: str | None = None) -> None:
    """After commit: serving rebuilds its snapshot; open shelves of the placement (None: all) re-serve."""

    def publish() -> None:
        try:
            get_control_redis().incr(CONFIG_VERSION_KEY)
        except Exception:
            logger.exception("surface.config_version_failed")
            return
        try:
            from surface_app import services

            notify = getattr(services, "shelves_placement_changed", None)
            if notify is not None:
                notify(placement=placement)
        except Exception:
            logger.exception("surface.shelves_notify_failed")

    transaction.on_commit(publish)


def rule_validate(*, rule: BusinessRule) -> None:
    """Messages a merchandiser understands, by field."""
    errors: dict[str, str] = {}
    try:
        conditions_parse(rule.condition)
    except ConditionError as error:
        errors["condition"] = str(error)
    try:
        conditions_parse(rule.audience, prefix="traits.")
    except ConditionError as error:
        errors["audience"] = str(error)
    if rule.kind == BusinessRule.Kind.PIN:
        if not rule.item_ids or len(rule.item_ids) != 1:
            errors["item_ids"] = "A pin needs exactly one item id."
        if not rule.slot:
            errors["slot"] = "A pin needs a slot (1 is the first)."
        elif rule.placement is not None and rule.slot > rule.placement.size:
            errors["slot"] = f"Slot {rule.slot} is beyond the placement's {rule.placement.size} slots."
    if rule.kind == BusinessRule.Kind.BLOCK and not rule.item_ids:
        errors["item_ids"] = "A block list needs at least one item id."
    if rule.kind in (BusinessRule.Kind.BOOST, BusinessRule.Kind.BURY) and rule.factor <= 1:
        errors["factor"] = "Boost and bury factors are above 1 (a bury divides by it)."
    if rule.valid_from and rule.valid_until and rule.valid_until <= rule.valid_from:
        errors["valid_until"] = "The rule must end after it starts."
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def rule_save(*, rule: BusinessRule) -> BusinessRule:
    rule.full_clean()
    rule_validate(rule=rule)
    rule.save()
    surface_config_changed(placement=rule.placement.name if rule.placement else None)
    return rule


@transaction.atomic
def rule_delete(*, rule: BusinessRule) -> None:
    placement = rule.placement.name if rule.placement else None
    rule.delete()
    surface_config_changed(placement=placement)


@transaction.atomic
def placement_save(*, placement: Placement) -> Placement:
    placement.full_clean()
    placement.save()
    surface_config_changed(placement=placement.name)
    return placement


@transaction.atomic
def placement_delete(*, placement: Placement) -> None:
    name = placement.name
    placement.delete()
    surface_config_changed(placement=name)


@transaction.atomic
def cap_save(*, cap: FrequencyCap) -> FrequencyCap:
    cap.full_clean()
    cap.save()
    surface_config_changed(placement=cap.placement.name if cap.placement else None)
    return cap


@transaction.atomic
def cap_delete(*, cap: FrequencyCap) -> None:
    placement = cap.placement.name if cap.placement else None
    cap.delete()
    surface_config_changed(placement=placement)


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
