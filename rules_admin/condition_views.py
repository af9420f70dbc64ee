"""The rule form's condition builder, under /admin/console/conditions/ (staff login): suggestions from the catalog
(and users' trait names, for an audience) and the live "matches N of M items" with the values no item has, as JSON
for `condition_builder.js`; and the page that blocks a category or brand in one step. Thin: the reads are
`surface_app.condition_checks` and `surface_app.catalog_blocks`, the write `catalog_blocks.catalog_value_block`."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.db import DataError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from surface_app.interface import (
    BLOCKABLE_FIELDS,
    LIVE_CHECK_BUDGET_MS,
    ConditionError,
    blockable_values,
    catalog_value_block,
    condition_match_count,
    condition_suggestions,
    condition_value_problems,
    conditions_parse,
)
from surface_app.models import Placement

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "surface_app.view_businessrule"
ADD_PERMISSION = "surface_app.add_businessrule"
CONDITION_BODY_MAX_BYTES = 256 * 1024


@require_GET
@permission_required(VIEW_PERMISSION, raise_exception=True)
def condition_values(request: HttpRequest) -> JsonResponse:
    """`?field=category|brand|price|attributes|attributes.<name>|traits&q=<prefix>`: `{"values": [{"value",
    "label"}]}` (`traits`: users' trait names, for an audience)."""
    suggestions = condition_suggestions(field=request.GET.get("field", ""), prefix=request.GET.get("q", "")[:200])
    return JsonResponse({"values": [{"value": found.value, "label": found.label} for found in suggestions]})


def _error(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


@require_POST
@permission_required(VIEW_PERMISSION, raise_exception=True)
def condition_count(request: HttpRequest) -> JsonResponse:
    """The body is the condition box's JSON: `{"matches", "total", "estimated", "problems": [{"field", "value",
    "suggestion", "message"}]}`, or 400 `{"error"}` naming what is wrong with it. A read: POST only because a long
    condition does not fit in a URL."""
    if len(request.body) > CONDITION_BODY_MAX_BYTES:
        return _error("The condition is too long.")
    text = request.body.decode("utf-8", errors="replace").strip()
    try:
        raw: Any = json.loads(text) if text else {}
    except (ValueError, RecursionError) as error:
        return _error(f"Not valid JSON: {error}.")
    try:
        conditions = conditions_parse(raw)
        problems = condition_value_problems(conditions=conditions, budget_ms=LIVE_CHECK_BUDGET_MS)
        count = condition_match_count(conditions=conditions)
    except ConditionError as error:
        return _error(str(error))
    except (ValidationError, ValueError, TypeError, DataError) as error:
        # A value the field cannot hold (a price that is not a number...): the save refuses it too.
        message = "; ".join(error.messages) if isinstance(error, ValidationError) else str(error).splitlines()[0]
        return _error(f"A value does not suit its field: {message}")
    return JsonResponse(
        {
            "matches": count.matches,
            "total": count.total,
            "estimated": count.estimated,
            "problems": [
                {
                    "field": problem.field,
                    "value": problem.value,
                    "suggestion": problem.suggestion,
                    "message": problem.message,
                }
                for problem in problems
            ],
        }
    )


def _block_context(request: HttpRequest, *, field: str, prefix: str) -> dict[str, Any]:
    return {
        **admin.site.each_context(request),
        "title": "Block a category or brand",
        "field": field,
        "fields": BLOCKABLE_FIELDS,
        "prefix": prefix,
        "values": blockable_values(field=field, prefix=prefix),
        "placements": Placement.objects.order_by("name"),
        "can_block": request.user.has_perm(ADD_PERMISSION),
    }


@require_http_methods(["GET", "POST"])
@permission_required(VIEW_PERMISSION, raise_exception=True)
def block_page(request: HttpRequest) -> HttpResponse:
    """GET `?field=category|brand&q=<prefix>`: the values with their item counts; POST `field`, `value`,
    `placement` (empty: every placement): the filter rule that blocks it, then back to the list."""
    data = request.POST if request.method == "POST" else request.GET
    field = data.get("field", "")
    field = field if field in BLOCKABLE_FIELDS else "category"
    prefix = data.get("q", "")[:200]
    if request.method == "POST":
        _block(request, field=field)
        return HttpResponseRedirect(f"{reverse('console:block')}?{urlencode({'field': field, 'q': prefix})}")
    return TemplateResponse(
        request, "rules_admin/catalog_block.html", _block_context(request, field=field, prefix=prefix)
    )


def _block(request: HttpRequest, *, field: str) -> None:
    if not request.user.has_perm(ADD_PERMISSION):
        messages.error(request, "Blocking needs the permission to add rules.")
        return
    placement_id = request.POST.get("placement") or None
    placement = Placement.objects.filter(pk=placement_id).first() if placement_id and placement_id.isdigit() else None
    if placement_id and placement is None:
        messages.error(request, "That placement no longer exists.")
        return
    try:
        rule = catalog_value_block(
            field=field, value=request.POST.get("value", ""), placement=placement, user=request.user
        )
    except ValidationError as error:
        messages.error(request, f"Not blocked: {' '.join(error.messages)}")
        return
    logger.info("console.catalog_value_blocked", extra={"rule_id": rule.pk, "user": request.user.get_username()})
    link = format_html(
        '<a href="{}">{}</a>', reverse("admin:surface_app_businessrule_change", args=[rule.pk]), rule.name
    )
    status = (
        "It is a draft: it serves once another user approves it." if rule.status == rule.Status.DRAFT
        else "Serving applies it within seconds."
    )  # fmt: skip
    messages.success(request, format_html("Blocked with the filter rule {}. {}", link, status))
