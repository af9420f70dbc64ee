from django.conf import settings
from django.db import models
from pgvector.django import IvfflatIndex, VectorField

# The model registry, the logs and the custom event types live in their own packages; imported here so Django
# registers them with Graph's models.
from graph_app.model_registry.models import ModelVersion
from graph_app.state.models import BanditDecision, CustomEventType, Event, EventId, Impression, RankerSlate

__all__ = ["BanditDecision", "CustomEventType", "Event", "EventId", "Impression", "ModelVersion", "RankerSlate"]


class Item(models.Model):
    external_id = models.CharField(max_length=200, unique=True)
    title = models.CharField(max_length=500)
    description = models.TextField(blank=True, default="")
    category = models.CharField(max_length=200, blank=True, default="", db_index=True)
    price = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    in_stock = models.BooleanField(default=True)
    attributes = models.JSONField(default=dict, blank=True)
    embedding = VectorField(dimensions=settings.EMBEDDING_DIMENSIONS, null=True, blank=True, editable=False)
    # How the embedding was made: "content" for items without interactions, "collaborative" once learned.
    embedding_source = models.CharField(max_length=20, blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["external_id"]
        indexes = [
            # The "fresh" source's newest items: without it a scan of the whole catalog (seconds at a million).
            models.Index(models.F("created_at").desc(), name="item_created_at"),
            # Inverted lists, not HNSW: shoppers' vectors are not like the items' (user and item factors of one model),
            # and an HNSW graph found 0.81 of their 10 nearest items at a million items (0.89 with four times the
            # graph and twenty times the search); searching 3 % of 2,000 lists finds 0.95, and the index builds in a
            # minute instead of three to seventeen (BENCHMARKS.md, "Scale, third pass"). `lists` here is a
            # placeholder: every build sizes it to the catalog (`graph_app.item_vector_index.ivfflat_lists`).
            IvfflatIndex(name="item_embedding_ivfflat", fields=["embedding"], lists=1, opclasses=["vector_cosine_ops"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(price__gte=0) | models.Q(price__isnull=True), name="item_price_not_negative"
            ),
            models.CheckConstraint(condition=~models.Q(external_id=""), name="item_external_id_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.external_id}: {self.title}"


class Shopper(models.Model):
    """A storefront's end user (the API calls it `user_id`)."""

    external_id = models.CharField(max_length=200, unique=True)
    traits = models.JSONField(default=dict, blank=True)
    embedding = VectorField(dimensions=settings.EMBEDDING_DIMENSIONS, null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["external_id"]
        verbose_name = "user"
        constraints = [
            models.CheckConstraint(condition=~models.Q(external_id=""), name="shopper_external_id_not_empty")
        ]

    def __str__(self) -> str:
        return self.external_id


class Entity(models.Model):
    """A node of the knowledge graph that items relate to: a category, brand, creator, tag..."""

    kind = models.SlugField(max_length=50)
    external_id = models.CharField(max_length=200)
    name = models.CharField(max_length=300, blank=True, default="")
    items = models.ManyToManyField(Item, through="ItemEntity", related_name="entities")

    class Meta:
        ordering = ["kind", "external_id"]
        verbose_name_plural = "entities"
        constraints = [models.UniqueConstraint(fields=["kind", "external_id"], name="entity_unique_kind_external_id")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.external_id}"


class ItemEntity(models.Model):
    """A weighted item → entity relation."""

    # No index of its own: item_entity_unique's (item, entity) serves an item's lookups, and each index is one more
    # insert per link of every new item (BENCHMARKS.md, "Scale, fourth pass").
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="entity_links", db_index=False)
    entity = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="item_links")
    weight = models.FloatField(default=1.0)

    class Meta:
        verbose_name = "item relation"
        constraints = [
            models.UniqueConstraint(fields=["item", "entity"], name="item_entity_unique"),
            models.CheckConstraint(condition=models.Q(weight__gt=0), name="item_entity_weight_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.item_id} -> {self.entity_id} ({self.weight})"


class ItemPopularity(models.Model):
    """An item's decayed popularity from the durable log: the popular fallback when Redis is unavailable.

    A table of its own, replaced as a whole by each refresh: as a column of the catalog its index made every
    refresh a new row version of each popular item, inserted again into the catalog's vector index (then an HNSW
    graph: 100 minutes for 300,000 items at 1 M). Ids are the storefront's, as in the log; the category is copied
    for the per-category lists, and readers join the catalog for stock (and the current category).
    """

    item_id = models.CharField(max_length=200, primary_key=True)
    category = models.CharField(max_length=200, blank=True, default="")
    score = models.FloatField()

    class Meta:
        verbose_name = "item popularity"
        verbose_name_plural = "item popularity"
        indexes = [
            models.Index(models.F("score").desc(), name="item_popularity_score"),
            models.Index("category", models.F("score").desc(), name="item_popularity_category"),
        ]

    def __str__(self) -> str:
        return f"{self.item_id}: {self.score:.3f}"


class ItemNeighbour(models.Model):
    """One of an item's nearest items in the one-hop graph, with why (replaced as a whole by each refresh).

    Ids are the storefront's item ids, as in the event log, so the hot path never joins; a deleted item's rows
    go at the next refresh.
    """

    class Source(models.TextChoices):
        ENTITY = "entity", "shared entity"
        CO_OCCURRENCE = "co-occurrence", "co-occurrence"

    item_id = models.CharField(max_length=200)
    neighbour_id = models.CharField(max_length=200)
    score = models.FloatField()
    # The component that contributed more to the score.
    source = models.CharField(max_length=20, choices=Source.choices)
    # "kind:id" of the strongest shared entity, or "co-occurrence".
    via = models.CharField(max_length=260)
    # The entity's name, or for co-occurrence the title of `item_id` (what the explanation names).
    via_name = models.CharField(max_length=500, blank=True, default="")
    refreshed_at = models.DateTimeField()

    class Meta:
        ordering = ["item_id", "-score", "neighbour_id"]
        verbose_name = "item neighbour"
        constraints = [
            models.UniqueConstraint(fields=["item_id", "neighbour_id"], name="item_neighbour_unique"),
            models.CheckConstraint(
                condition=~models.Q(item_id=models.F("neighbour_id")), name="item_neighbour_not_self"
            ),
            models.CheckConstraint(condition=models.Q(score__gt=0), name="item_neighbour_score_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.item_id} -> {self.neighbour_id} ({self.source}, {self.score:.3f})"


class FeatureRow(models.Model):
    """A training example: one item of a served slate, its features as of serving (the offline materialization)
    and what the shopper did with it afterwards."""

    request_id = models.CharField(max_length=100)
    slot = models.PositiveIntegerField()
    user_key = models.CharField(max_length=220)
    item_id = models.CharField(max_length=200)
    placement = models.CharField(max_length=100)
    served_at = models.DateTimeField(db_index=True)
    model_version = models.CharField(max_length=60, blank=True, default="")
    # In graph_app.features.definitions.FEATURE_NAMES order; NaN (missing) stored as null.
    features = models.JSONField()
    feature_names = models.JSONField()
    clicked = models.BooleanField(default=False)
    purchased = models.BooleanField(default=False)
    materialized_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-served_at"]
        constraints = [models.UniqueConstraint(fields=["request_id", "slot"], name="feature_row_unique_slot")]

    def __str__(self) -> str:
        return f"{self.request_id}#{self.slot} {self.item_id}"


class MaterializationCursor(models.Model):
    """How far the offline materialization has looked (slates served before `served_before` are done): one row,
    locked by the run that advances it, so that a run reads only what is new and two runs never overlap."""

    served_before = models.DateTimeField()

    def __str__(self) -> str:
        return f"materialized before {self.served_before:%Y-%m-%d %H:%M}"
