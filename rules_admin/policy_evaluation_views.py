"""Off-policy evaluation (/admin/console/evaluation/): what a candidate ranker version, or popularity, would have
earned on a placement, estimated from the serving ranker's logged slates before it gets any traffic. Thin: the form
picks the placement and the candidate, `scoring_app.interface.policy_evaluate_logged` estimates (synchronously, on
at most CONSOLE_MAX_SLATES slates), the page shows the estimates with their intervals and warnings."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from scoring_app.interface import PolicyEvaluationError, candidate_versions, policy_evaluate_logged
from surface_app.interface import placement_names

VIEW_PERMISSION = "graph_app.view_modelversion"
# The page runs in the request: a bounded number of the most recent slates (a few seconds at most).
CONSOLE_MAX_SLATES = 3000
WINDOWS = (7, 14, 30)
DEFAULT_DAYS = 14
REWARDS = (("click", "Clicks per slate"), ("revenue", "Revenue per slate"))


class PolicyEvaluationForm(forms.Form):
    placement = forms.ChoiceField()
    candidate = forms.ChoiceField(help_text="A registered ranker version, or popularity (no personalization).")
    days = forms.TypedChoiceField(
        coerce=int, choices=[(days, f"Last {days} days") for days in WINDOWS], initial=DEFAULT_DAYS, required=False,
        empty_value=DEFAULT_DAYS,
    )  # fmt: skip
    reward = forms.ChoiceField(choices=REWARDS, initial="click", required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["placement"].choices = [(name, name) for name in sorted(placement_names())]
        self.fields["candidate"].choices = [(version, version) for version in candidate_versions()]


@require_GET
@permission_required(VIEW_PERMISSION, raise_exception=True)
def policy_evaluation_page(request: HttpRequest) -> HttpResponse:
    """GET without a placement: the empty form; with one: the estimates."""
    form = PolicyEvaluationForm(request.GET if "placement" in request.GET else None)
    report = None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        try:
            report = policy_evaluate_logged(
                placement=data["placement"], candidate=data["candidate"], days=data["days"],
                max_slates=CONSOLE_MAX_SLATES, reward=data["reward"] or "click",
            )  # fmt: skip
        except PolicyEvaluationError as error:
            form.add_error(error.field if error.field in form.fields else None, error.message)
    estimates = None
    if report is not None:
        estimate = report.estimate
        estimates = [("IPS", estimate.ips), ("Self-normalized IPS", estimate.snips), ("Doubly robust", estimate.dr)]
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Off-policy evaluation",
        "form": form,
        "report": report,
        "estimates": estimates,
        "max_slates": CONSOLE_MAX_SLATES,
    }
    return TemplateResponse(request, "rules_admin/policy_evaluation.html", context)
