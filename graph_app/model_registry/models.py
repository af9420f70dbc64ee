"""The model registry's one table. It belongs to Graph, below every layer that trains or serves models (Graph's
embeddings, Score's ranker and bandit); the table keeps the name it had in Score."""

from django.core.validators import MaxValueValidator
from django.db import models


class ModelVersion(models.Model):
    """A trained artifact (embeddings, ranker, bandit) and where it stands in its life: a candidate waits, a canary
    serves a share of users, the active one serves everyone else, a retired one is kept for rollback and audit."""

    class Kind(models.TextChoices):
        EMBEDDINGS = "embeddings", "Embeddings"
        RANKER = "ranker", "Ranker (LightGBM)"
        BANDIT = "bandit", "Contextual bandit"

    class State(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        CANARY = "canary", "Canary"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    kind = models.CharField(max_length=30, choices=Kind.choices)
    version = models.CharField(max_length=60, unique=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.CANDIDATE)
    canary_percent = models.PositiveSmallIntegerField(
        default=0,
        validators=[MaxValueValidator(100)],
        help_text="While a canary: the share of users (by a stable hash of the user) it serves.",
    )
    metrics = models.JSONField(default=dict, blank=True)
    feature_names = models.JSONField(default=list, blank=True)
    training_window_start = models.DateTimeField(null=True, blank=True)
    training_window_end = models.DateTimeField(null=True, blank=True)
    # Small artifacts live in the database so every web and worker machine reads the same bytes.
    artifact = models.BinaryField(editable=False)
    # The version that was active when this one was promoted: what a rollback returns to.
    replaced_version = models.CharField(max_length=60, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "scoring_app_modelversion"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(state="active"), name="model_version_one_active_per_kind"
            ),
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(state="canary"), name="model_version_one_canary_per_kind"
            ),
            models.CheckConstraint(condition=models.Q(canary_percent__lte=100), name="model_version_canary_percent"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.version} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state == self.State.ACTIVE
