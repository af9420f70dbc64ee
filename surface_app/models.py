"""What merchandisers configure for the Surface layer: placements, business rules, frequency caps.

Serving never reads these tables per request: `surface_app.serving.rules` compiles them into an in-process
snapshot that is rebuilt when the configuration's version (in Redis) changes.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

RETRIEVAL_SOURCES = ("context", "similar", "graph", "user_vector", "category_popular", "popular", "fresh")
FALLBACKS = ("popular", "session", "last_slate", "default_list")


def _default_fallbacks() -> list[str]:
    return list(FALLBACKS)


class Placement(models.Model):
    """A shelf on the storefront (home, product page, cart...) with its own size, sources, rules and fallbacks."""

    class Context(models.TextChoices):
        USER = "user", "The user's taste (home, category pages)"
        ITEM = "item", "An item being viewed (similar items on a product page)"
        CART = "cart", "Items in the cart (cross-sell)"

    class Scorer(models.TextChoices):
        AUTO = "auto", "Ranker, bandit when the ranker is unsure"
        RANKER = "ranker", "Ranker only"
        BANDIT = "bandit", "Bandit only"
        RETRIEVAL = "retrieval", "Retrieval order (no model)"

    name = models.SlugField(max_length=100, unique=True, help_text="What storefronts send as `placement`.")
    title = models.CharField(max_length=200, blank=True, default="")
    context = models.CharField(max_length=10, choices=Context.choices, default=Context.USER)
    size = models.PositiveSmallIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(100)], help_text="Slots on the shelf."
    )
    sources = models.JSONField(
        default=list,
        blank=True,
        help_text=f"Retrieval sources to use (empty: all). Known: {', '.join(RETRIEVAL_SOURCES)}.",
    )
    scorer = models.CharField(max_length=10, choices=Scorer.choices, default=Scorer.AUTO)
    fallbacks = models.JSONField(
        default=_default_fallbacks,
        blank=True,
        help_text=f"What serves, in order, when the personal slate cannot: {', '.join(FALLBACKS)}.",
    )
    default_items = models.JSONField(default=list, blank=True, help_text="Item ids of the last-resort default list.")
    deadline_ms = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(5), MaxValueValidator(1000)], help_text="Time budget of a request."
    )
    max_per_category = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Diversity: at most this many items of one category (empty: no limit)."
    )
    max_per_brand = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Diversity: at most this many items of one brand (empty: no limit)."
    )
    exclude_purchased = models.BooleanField(default=True, help_text="Leave out what the user already bought.")
    requires_review = models.BooleanField(
        default=False,
        help_text="Rule changes on this placement are drafts until another user with the publish permission approves.",
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Who changed what and when, before / after (the console's history, from which a version can be restored).
    history = HistoricalRecords(excluded_fields=["updated_at"])

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        unknown_sources = [source for source in self.sources or [] if source not in RETRIEVAL_SOURCES]
        if not isinstance(self.sources, list) or unknown_sources:
            errors["sources"] = f"Unknown retrieval sources: {', '.join(map(str, unknown_sources)) or self.sources}."
        unknown_fallbacks = [step for step in self.fallbacks or [] if step not in FALLBACKS]
        if not isinstance(self.fallbacks, list) or unknown_fallbacks:
            errors["fallbacks"] = f"Unknown fallbacks: {', '.join(map(str, unknown_fallbacks)) or self.fallbacks}."
        if not isinstance(self.default_items, list) or not all(isinstance(i, str) for i in self.default_items):
            errors["default_items"] = "A list of item ids."
        if errors:
            raise ValidationError(errors)


class BusinessRule(models.Model):
    """A merchandising rule applied after the model (see `surface_app.serving.rules` for the order)."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft: waiting for review"
        PUBLISHED = "published", "Published"

    class Kind(models.TextChoices):
        FILTER = "filter", "Filter out matching items"
        BOOST = "boost", "Boost matching items"
        BURY = "bury", "Bury matching items"
        PIN = "pin", "Pin an item at a slot"
        BLOCK = "block", "Block listed items"

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    placement = models.ForeignKey(
        Placement, null=True, blank=True, on_delete=models.CASCADE, related_name="rules",
        help_text="Empty: every placement.",
    )  # fmt: skip
    priority = models.IntegerField(default=0, help_text="Higher applies first and wins conflicts.")
    enabled = models.BooleanField(default=True)
    valid_from = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)
    # Conditions: {"field": "category" | "price" | "brand" | "attributes.<name>", "op": "eq" | "ne" | "in" |
    # "lt" | "lte" | "gt" | "gte" | "contains", "value": ...}; a list of them means all must hold.
    condition = models.JSONField(default=dict, blank=True, help_text="Which items the rule touches.")
    audience = models.JSONField(
        default=dict, blank=True, help_text="Which users (conditions on `traits.<name>`); empty: everyone."
    )
    factor = models.FloatField(default=2.0, help_text="Boost multiplies scores by this, bury divides by it.")
    item_ids = models.JSONField(default=list, blank=True, help_text="Pin: the item; block: the items.")
    slot = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Pin: the slot, 1 is the first.")
    campaign = models.CharField(max_length=100, blank=True, default="", help_text="Campaign name (pins, caps).")
    # A pin is the merchandiser's explicit choice: item, category and entity caps (set for freshness, usually on
    # every placement) count its impressions but do not remove it, unless its author opts in here.
    caps_apply = models.BooleanField(
        default=False,
        verbose_name="Frequency caps apply to this pin",
        help_text="Pin: item, category and entity caps may remove the pinned item once it reached them (campaign "
        "caps and the cool-down after a hide or skip always apply). Off: the pin shows at every visit.",
    )
    # Review (placements that require it): a changed rule is a draft, and does not serve, until another user with
    # the publish permission approves it.
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PUBLISHED, editable=False)
    drafted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords(excluded_fields=["updated_at"])

    class Meta:
        ordering = ["-priority", "-updated_at"]
        permissions = [("publish_rule", "Can approve and publish rules of placements that require review")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.name}"


class FrequencyCap(models.Model):
    """At most `max_impressions` impressions per user of one item / category / entity / campaign, or of the
    placement itself, within a sliding window; or a cool-down after the user hides or skips an item."""

    class Scope(models.TextChoices):
        ITEM = "item", "Per user and item"
        CATEGORY = "category", "Per user and category"
        ENTITY = "entity", "Per user and entity (brand, creator...)"
        CAMPAIGN = "campaign", "Per user and campaign"
        PLACEMENT = "placement", "Per user and placement"
        COOLDOWN = "cooldown", "Cool-down after a hide or skip"

    name = models.CharField(max_length=200)
    scope = models.CharField(max_length=10, choices=Scope.choices)
    placement = models.ForeignKey(
        Placement, null=True, blank=True, on_delete=models.CASCADE, related_name="caps",
        help_text="Empty: every placement.",
    )  # fmt: skip
    max_impressions = models.PositiveIntegerField(default=3, validators=[MinValueValidator(1)])
    window_seconds = models.PositiveIntegerField(default=86400, validators=[MinValueValidator(1)])
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)
    history = HistoricalRecords(excluded_fields=["updated_at"])

    class Meta:
        ordering = ["scope", "name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(window_seconds__gt=0), name="frequency_cap_window_positive"),
            models.CheckConstraint(condition=models.Q(max_impressions__gt=0), name="frequency_cap_max_positive"),
        ]

    def __str__(self) -> str:
        if self.scope == self.Scope.COOLDOWN:
            return f"{self.name}: no hidden or skipped item for {self.window_seconds} s"
        return f"{self.name}: {self.max_impressions} per {self.window_seconds} s ({self.scope})"


class PinRule(BusinessRule):
    """The console's "Pins and campaigns": the pin rules (an item at a slot, usually for a campaign)."""

    class Meta:
        proxy = True
        verbose_name = "pin or campaign"
        verbose_name_plural = "pins and campaigns"


class FallbackList(Placement):
    """The console's "Fallback lists": each placement's fallback chain and default items, edited on their own."""

    class Meta:
        proxy = True
        verbose_name = "fallback list"
        verbose_name_plural = "fallback lists"


# The console opens a proxy's history through the model it stands for (its rows are that model's rows).
PinRule._meta.simple_history_manager_attribute = "history"  # type: ignore[attr-defined]
FallbackList._meta.simple_history_manager_attribute = "history"  # type: ignore[attr-defined]

# Experiments keep their model in their own package; imported here so that Django registers it with Surface.
from surface_app.experiments.models import Experiment as Experiment  # noqa: E402
