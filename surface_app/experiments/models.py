"""An experiment: an A/B test of treatments on one placement, its variants' shares and what it is judged on."""

from __future__ import annotations

from django.db import models


class Experiment(models.Model):
    """Shoppers of one placement split between 2 to 5 variants (`surface_app.experiments.assignment`), each served
    by its own treatment, compared on a primary metric under guardrails. At most one runs per placement."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft: not serving"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    class Metric(models.TextChoices):
        CTR = "ctr", "Click-through rate"
        ADD_TO_CART_RATE = "add_to_cart_rate", "Add-to-cart rate"
        CONVERSION_RATE = "conversion_rate", "Conversion rate"
        RPM = "rpm", "Revenue per thousand impressions"

    name = models.CharField(max_length=200)
    placement = models.ForeignKey("surface_app.Placement", on_delete=models.CASCADE, related_name="experiments")
    primary_metric = models.CharField(max_length=20, choices=Metric.choices)
    # Variants as one JSON list ([{"name", "weight", "treatment": {"kind", ...}}], validated by the services): they
    # are written once with the experiment, never edited alone, and read whole (assignment needs all the weights
    # in order), so a child table would add a join and a lock for nothing.
    variants = models.JSONField()
    guardrail_p99_ms = models.FloatField(null=True, blank=True, help_text="Serving p99 limit (ms); empty: none.")
    guardrail_degraded_rate = models.FloatField(
        null=True, blank=True, help_text="Share of degraded slates allowed (0 to 1); empty: none."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    # Set once at creation: a new salt would reshuffle every shopper between the variants.
    salt = models.CharField(max_length=32, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["placement"],
                condition=models.Q(status="running"),
                name="experiment_one_running_per_placement",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["draft", "running", "stopped"]), name="experiment_status_known"
            ),
            models.CheckConstraint(
                condition=models.Q(primary_metric__in=["ctr", "add_to_cart_rate", "conversion_rate", "rpm"]),
                name="experiment_primary_metric_known",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"
