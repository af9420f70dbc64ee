"""Reads of experiments."""

from __future__ import annotations

from django.db.models import QuerySet

from surface_app.experiments.models import Experiment

EXPERIMENTS_LISTED_MAX = 200  # the newest; a shop runs a handful a month


def experiment_get(*, experiment_id: int) -> Experiment | None:
    """The experiment with its placement, or None."""
    return Experiment.objects.select_related("placement").filter(pk=experiment_id).first()


def experiments_list(*, placement: str | None = None, status: str | None = None) -> QuerySet[Experiment]:
    """The newest experiments first (at most EXPERIMENTS_LISTED_MAX), of one placement (by name) or status if given."""
    experiments = Experiment.objects.select_related("placement").order_by("-created_at", "-pk")
    if placement:
        experiments = experiments.filter(placement__name=placement)
    if status:
        experiments = experiments.filter(status=status)
    return experiments[:EXPERIMENTS_LISTED_MAX]
