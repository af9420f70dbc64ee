"""Reads of experiments."""

from __future__ import annotations

from surface_app.experiments.models import Experiment


def experiment_get(*, experiment_id: int) -> Experiment | None:
    """The experiment with its placement, or None."""
    return Experiment.objects.select_related("placement").filter(pk=experiment_id).first()
