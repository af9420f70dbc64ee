"""Preview and explain (/admin/console/preview/): the slate a user, or a made-up profile, is served now and would be
served with an unsaved rule edit, side by side. Thin: parse the forms, call `surface_app.preview`, render.
Saving the edited rule is a separate POST (`preview_save`) through `surface_app.configuration.rule_save`."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from rules_admin.preview_display import preview_columns
from rules_admin.preview_forms import PreviewForm, RuleEditForm, preview_rule_form
from surface_app.interface import configuration, preview_explain
from surface_app.models import BusinessRule

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "surface_app.view_businessrule"
# What the page keeps across a save (the redirect back shows the saved rule's effect).
KEPT_FIELDS = ("placement", "user_id", "traits", "recent_items", "k")


def _picked_rule(form: PreviewForm, data: QueryDict) -> BusinessRule | None:
    try:
        return form.fields["rule"].clean(data.get("rule"))
    except ValidationError:
        return None


def _can_save(request: HttpRequest, rule: BusinessRule | None) -> bool:
    return request.user.has_perm("surface_app.change_businessrule" if rule else "surface_app.add_businessrule")


def _render(
    request: HttpRequest,
    *,
    preview_form: PreviewForm,
    rule_form: RuleEditForm,
    rule: BusinessRule | None,
    has_edit: bool,
) -> HttpResponse:
    columns = None
    edit_valid = has_edit and rule_form.is_valid()
    if preview_form.is_bound and preview_form.is_valid():
        data = preview_form.cleaned_data
        served, edited = preview_explain(
            placement=data["placement"],
            user_id=data["user_id"],
            traits=data["traits"],
            recent_items=data["recent_items"],
            rule_edits=[rule_form.rule_edit()] if edit_valid else None,
            k=data["k"],
        )
        columns = preview_columns(served=served, edited=edited, has_edit=edit_valid)
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Preview and explain",
        "preview_form": preview_form,
        "rule_form": rule_form,
        "rule": rule,
        "has_edit": has_edit,
        "edit_valid": edit_valid,
        "columns": columns,
        "can_save": _can_save(request, rule),
    }
    return TemplateResponse(request, "rules_admin/preview.html", context)


@require_http_methods(["GET", "POST"])
@permission_required(VIEW_PERMISSION, raise_exception=True)
def preview_page(request: HttpRequest) -> HttpResponse:
    """GET without a placement: the empty form (`?rule=ID` loads a saved rule); otherwise the preview."""
    data = request.POST if request.method == "POST" else request.GET
    bound = request.method == "POST" or "placement" in request.GET
    preview_form = PreviewForm(data if bound else None, initial={"rule": data.get("rule")})
    rule = _picked_rule(preview_form, data)
    rule_form, has_edit = preview_rule_form(data, rule=rule)
    return _render(request, preview_form=preview_form, rule_form=rule_form, rule=rule, has_edit=has_edit)


@require_POST
@permission_required(VIEW_PERMISSION, raise_exception=True)
def preview_save(request: HttpRequest) -> HttpResponse:
    """Save the edited rule (serving picks it up within seconds), then show the preview again."""
    preview_form = PreviewForm(request.POST)
    rule = _picked_rule(preview_form, request.POST)
    if not _can_save(request, rule):
        raise PermissionDenied
    rule_form, has_edit = preview_rule_form(request.POST, rule=rule)
    if not has_edit:
        rule_form.add_error("kind", "Choose the kind of rule to save.")
    elif rule_form.is_valid():
        try:
            saved = configuration.rule_save(rule=rule_form.rule_edit())
        except ValidationError as error:
            for field_name, field_messages in error.message_dict.items():
                rule_form.add_error(field_name if field_name in rule_form.fields else None, field_messages)
        else:
            logger.info("console.preview_rule_saved", extra={"rule_id": saved.pk, "user": request.user.get_username()})
            messages.success(request, f"Saved “{saved}”: serving applies it within seconds.")
            query = {name: request.POST[name] for name in KEPT_FIELDS if request.POST.get(name)}
            return HttpResponseRedirect(f"{reverse('console:preview')}?{urlencode({**query, 'rule': saved.pk})}")
    return _render(request, preview_form=preview_form, rule_form=rule_form, rule=rule, has_edit=has_edit)
