"""What other apps may use of Surface (Sentry's cross-app service idea): keyword-only functions and plain data,
never Surface's tables. Re-exports of the modules that implement them.

- Serving: a placement's slate for a user, as the API serves it (`slate_serve`), for the offline evaluation.
- Configuration: every write of placements, rules and caps with its validation and serving's notification
  (`configuration`, a module of keyword-only services), the default set-up of a new platform
  (`surface_defaults_install`), the placements' names.
- Rule conditions: parsing, counting the items they match, their values' problems and suggestions, blocking a
  catalog value; conflicts between a placement's rules and caps. The console's pages are built on these.
- Experiments: create, start and stop one (the services validate and name the field), list and read them, and
  judge one (`experiment_results_compute`); the console's experiment pages are built on these.
- Erasure: Surface's part of erasing a shopper (its keys in Redis, its cached slates), which `operations.erasure`
  orchestrates.

Graph and Signal never call Surface: they publish their changes on `personalization.live_updates`, to which
Surface subscribes. The console (`rules_admin`) also administers Surface's models (its ModelAdmins and forms
need the model classes: the one exception `.importlinter` lists); its preview explains a slate through
`preview_explain`.
"""

from __future__ import annotations

from surface_app import configuration
from surface_app.catalog_blocks import BLOCKABLE_FIELDS, blockable_values, catalog_value_block
from surface_app.condition_checks import (
    LIVE_CHECK_BUDGET_MS,
    condition_match_count,
    condition_suggestions,
    condition_value_problems,
)
from surface_app.configuration import items_unknown, rule_validate, surface_defaults_install
from surface_app.conflicts import Conflict, RuleRef, conflicts_by_defeated_rule, placement_conflicts
from surface_app.erasure import shopper_surface_keys, slates_forget
from surface_app.experiments.models import Experiment
from surface_app.experiments.results import ExperimentResults, experiment_results_compute
from surface_app.experiments.selectors import experiment_get, experiments_list
from surface_app.experiments.services import (
    TREATMENT_KINDS,
    VARIANTS_MAX,
    VARIANTS_MIN,
    WEIGHT_MAX,
    experiment_create,
    experiment_start,
    experiment_stop,
)
from surface_app.preview import PreviewResult, preview_explain
from surface_app.rules_compile import ConditionError, conditions_parse
from surface_app.selectors import placement_names
from surface_app.serving.slates import Slate, slate_serve

__all__ = [
    "BLOCKABLE_FIELDS",
    "LIVE_CHECK_BUDGET_MS",
    "TREATMENT_KINDS",
    "VARIANTS_MAX",
    "VARIANTS_MIN",
    "WEIGHT_MAX",
    "ConditionError",
    "Conflict",
    "Experiment",
    "ExperimentResults",
    "PreviewResult",
    "RuleRef",
    "Slate",
    "blockable_values",
    "catalog_value_block",
    "condition_match_count",
    "condition_suggestions",
    "condition_value_problems",
    "conditions_parse",
    "configuration",
    "conflicts_by_defeated_rule",
    "experiment_create",
    "experiment_get",
    "experiment_results_compute",
    "experiment_start",
    "experiment_stop",
    "experiments_list",
    "items_unknown",
    "placement_conflicts",
    "placement_names",
    "preview_explain",
    "rule_validate",
    "shopper_surface_keys",
    "slate_serve",
    "slates_forget",
    "surface_defaults_install",
]
