"""The durable logs and the event types staff register: the event log (partitioned by month, raw SQL in
`signals_app` migrations 0003), its idempotency keys, the impression log (partitioned by day, migration 0008), the
bandit's decision log, the ranker's logged pools and custom event types. The tables that came from `signals_app`
keep the names they had there."""

from django.core.exceptions import ValidationError
from django.db import models


class Event(models.Model):
    """The durable log of what shoppers did.

    In PostgreSQL the table is partitioned by month of `occurred_at` (migration 0003), so its real primary key is
    `(id, occurred_at)`; `id` alone is still unique (one identity sequence) and is what the ORM and the admin use.
    Uniqueness of `event_id`, the client's idempotency key, is kept by `EventId`, written first by the log.
    """

    event_id = models.CharField(max_length=100)
    type = models.CharField(max_length=50)
    user_id = models.CharField(max_length=200, blank=True, default="")
    session_id = models.CharField(max_length=200, blank=True, default="")
    item_id = models.CharField(max_length=200, blank=True, default="")
    placement = models.CharField(max_length=100, blank=True, default="")
    request_id = models.CharField(max_length=100, blank=True, default="")
    # The slot (0-based position) the storefront reported the item in.
    slot = models.IntegerField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    # The served slate the event answers, as the platform logged it (empty when the request_id matched none).
    attributed_placement = models.CharField(max_length=100, blank=True, default="")
    attributed_slot = models.IntegerField(null=True, blank=True)
    attributed_model_version = models.CharField(max_length=60, blank=True, default="")
    attributed_score = models.FloatField(null=True, blank=True)
    attributed_source = models.CharField(max_length=30, blank=True, default="")

    class Meta:
        db_table = "signals_app_event"
        ordering = ["-occurred_at"]
        indexes = [
            models.Index(fields=["user_id", "occurred_at"], name="event_user_time"),
            models.Index(fields=["item_id", "occurred_at"], name="event_item_time"),
            models.Index(fields=["occurred_at"], name="event_time"),
            models.Index(fields=["event_id"], name="event_event_id"),
            # The console's dashboard: the events attributed to a shown item, by time (a small share of the log),
            # carrying what its per-placement rates and revenue need.
            models.Index(
                fields=["occurred_at"],
                include=["type", "request_id", "attributed_slot", "item_id", "value"],
                condition=models.Q(attributed_slot__isnull=False),
                name="event_attributed_time",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=~models.Q(user_id="", session_id=""), name="event_has_user_or_session")
        ]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type} {self.user_id or self.session_id} {self.item_id}"


class EventId(models.Model):
    """Every event id the log holds, once: the idempotency key a partitioned table cannot enforce itself.

    `occurred_at` locates the event's partition.
    """

    event_id = models.CharField(max_length=100, primary_key=True)
    occurred_at = models.DateTimeField()

    class Meta:
        db_table = "signals_app_eventid"
        verbose_name = "event id"

    def __str__(self) -> str:
        return self.event_id


class Impression(models.Model):
    """One item shown in a served slate: what the next training run and the KPIs count clicks against.

    In PostgreSQL the table is partitioned by day of `served_at` (migration 0008; see `graph_app.state.log`), so its
    real primary key is (id, served_at) and a slot is unique per request within its serving time.
    """

    # Looked up through the unique constraint's index, which leads with it.
    request_id = models.CharField(max_length=100)
    user_key = models.CharField(max_length=220)
    placement = models.CharField(max_length=100)
    item_id = models.CharField(max_length=200)
    slot = models.PositiveIntegerField()
    score = models.FloatField(null=True)
    source = models.CharField(max_length=30, blank=True, default="")
    model_version = models.CharField(max_length=60, blank=True, default="")
    # Which arm served it: "control" (the active model) or "canary".
    variant = models.CharField(max_length=20, blank=True, default="")
    # The business rules that touched the item (names), and which Score path chose the slate.
    rules = models.JSONField(default=list, blank=True)
    path = models.CharField(max_length=20, blank=True, default="")
    served_at = models.DateTimeField()
    # Set when the contextual bandit chose the item: the probability it had of being chosen for its slot, given
    # the bandit's earlier picks in the slate (what off-policy learning and evaluation divide by).
    propensity = models.FloatField(null=True, blank=True)
    # Set when the ranker's stochastic logging policy served the item (`scoring_app.engine.ranking_exploration`):
    # its probability of being at its slot of the ranker's draw. Apart from `propensity` so that the bandit's
    # learner (which reads rows with a propensity) never learns from the ranker's slots.
    logging_propensity = models.FloatField(null=True, blank=True)
    # The cost the bandit was fed for this impression (negative: a reward); null until fed, so each learns once.
    bandit_cost = models.FloatField(null=True, blank=True)
    # The experiment running on the placement when the slate was served, and the shopper's variant in it (no
    # foreign key: the log outlives what it logs, and the serving path writes it without a database read).
    experiment_id = models.IntegerField(null=True, blank=True)
    experiment_variant = models.CharField(max_length=50, blank=True, default="")
    # The assignment unit the variant was drawn by (`graph_app.state.assignment_unit`): an anonymous session's key
    # stays the unit after identify, so a shopper who signs in mid-experiment is one shopper in its results.
    experiment_unit = models.CharField(max_length=220, blank=True, default="")
    # How long the slate took to build (ms), and whether it was degraded: an experiment's guardrails.
    serving_ms = models.FloatField(null=True, blank=True)
    degraded = models.BooleanField(default=False)

    class Meta:
        db_table = "signals_app_impression"
        ordering = ["-served_at"]
        indexes = [
            models.Index(fields=["placement", "item_id", "served_at"], name="impression_placement_item"),
            # The console's dashboard: impressions per placement per day over a date range.
            models.Index(fields=["served_at"], include=["placement"], name="impression_served_time"),
            # The bandit's queue: served by it and not learned yet (small, it empties every minute).
            models.Index(
                fields=["served_at"],
                name="impression_bandit_pending",
                condition=models.Q(propensity__isnull=False, bandit_cost__isnull=True),
            ),
            # An experiment's results: its rows only, by serving time.
            models.Index(
                fields=["experiment_id", "served_at"],
                name="impression_experiment",
                condition=models.Q(experiment_id__isnull=False),
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["request_id", "slot", "served_at"], name="impression_unique_slot")
        ]

    def __str__(self) -> str:
        return f"{self.request_id}#{self.slot} {self.item_id}"


class BanditDecision(models.Model):
    """What the contextual bandit could choose from when it filled a served slate: the shared features and every
    action it was offered (item id, VW features), once per slate rather than on each impression. The bandit learns
    an impression's outcome against these alternatives."""

    request_id = models.CharField(max_length=100, unique=True)
    placement = models.CharField(max_length=100)
    served_at = models.DateTimeField(db_index=True)
    shared = models.TextField()
    actions = models.JSONField(default=list)  # [[item id, features], ...]

    class Meta:
        db_table = "signals_app_banditdecision"
        ordering = ["-served_at"]

    def __str__(self) -> str:
        return f"{self.request_id} ({len(self.actions)} actions)"


class RankerSlate(models.Model):
    """What the ranker drew a served slate from, for off-policy evaluation of another ranking (one row a logged
    ranker slate): the pool's items (best first), their feature rows as the store served them, the serving
    ranker's scores of them, the logging policy's parameters, and the pool rows it showed.

    `features` is the pool's rows as little-endian float32 (len(item_ids) x len(feature_names), NaN: missing):
    about a tenth of the same numbers in JSON. `shown` is [pool row, slot in the ranker's draw, slot served,
    propensity] of each shown item the ranker's draw placed, in served order."""

    request_id = models.CharField(max_length=100, unique=True)
    placement = models.CharField(max_length=100)
    served_at = models.DateTimeField()
    model_version = models.CharField(max_length=60, blank=True, default="")
    feature_names = models.JSONField(default=list)
    item_ids = models.JSONField(default=list)
    features = models.BinaryField()
    logging_scores = models.JSONField(default=list)
    policy = models.JSONField(default=dict)  # {"share", "temperature", "pool"}
    shown = models.JSONField(default=list)

    class Meta:
        db_table = "graph_app_rankerslate"
        ordering = ["-served_at"]
        indexes = [
            # Off-policy evaluation reads a placement's most recent slates; retention deletes by serving time.
            models.Index(fields=["placement", "-served_at"], name="ranker_slate_placement_time"),
            models.Index(fields=["served_at"], name="ranker_slate_time"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} ({len(self.item_ids)} in the pool)"


class CustomEventType(models.Model):
    """An event type staff register in the admin, beside the built-in ones."""

    name = models.SlugField(unique=True)
    description = models.CharField(max_length=300, blank=True, default="")
    needs_item = models.BooleanField(default=True)
    popularity_weight = models.FloatField(default=0.0, help_text="0 leaves popularity and affinities alone.")
    marks_interest = models.BooleanField(default=False, help_text="Whether the item joins the user's recent items.")

    class Meta:
        db_table = "signals_app_customeventtype"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(popularity_weight__gte=0), name="custom_type_weight_not_negative")
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from graph_app.state.event_types import BUILT_IN_EVENT_TYPES

        if self.name in BUILT_IN_EVENT_TYPES:
            raise ValidationError({"name": "This name is a built-in event type; choose another."})
