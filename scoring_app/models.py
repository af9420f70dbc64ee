from django.db import models


class ModelVersion(models.Model):
    """A trained artifact (embeddings, ranker, bandit) and whether it serves."""

    class Kind(models.TextChoices):
        EMBEDDINGS = "embeddings", "Embeddings"

    kind = models.CharField(max_length=30, choices=Kind.choices)
    version = models.CharField(max_length=60, unique=True)
    is_active = models.BooleanField(default=False)
    metrics = models.JSONField(default=dict, blank=True)
    # Small artifacts live in the database so every web and worker machine reads the same bytes.
    artifact = models.BinaryField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(is_active=True), name="model_version_one_active_per_kind"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.version}{' (active)' if self.is_active else ''}"
