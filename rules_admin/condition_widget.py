"""The rule form's condition as rows of field / operator / value picked from the catalog, over the JSON box it
writes (still there for power users: "Edit as JSON"). The rows are `static/rules_admin/condition_builder.js`, loaded
as a file (the console's Content-Security-Policy runs no inline script); without JavaScript the box alone shows.

`mode="audience"`: the same rows for a rule's audience (which users: conditions on `traits.<name>`), a trait name
typed (suggested from users' traits) with the kind of its value chosen, and a sentence saying who the audience is
instead of the item count.

The template sits in the app's templates: Django's form renderer reads widget templates from the apps only."""

from __future__ import annotations

from typing import Any, Literal

from django import forms
from django.urls import reverse

Mode = Literal["items", "audience"]


class ConditionBuilderWidget(forms.Textarea):
    template_name = "rules_admin/widgets/condition_builder.html"

    class Media:
        js = ["rules_admin/condition_builder.js"]
        css = {"all": ["rules_admin/condition_builder.css"]}

    def __init__(self, attrs: dict[str, Any] | None = None, *, mode: Mode = "items") -> None:
        super().__init__(attrs={"rows": 3, "cols": 60, "spellcheck": "false", **(attrs or {})})
        self.mode = mode

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        builder = {
            "mode": self.mode,
            "audience": self.mode == "audience",
            "values_url": reverse("console:condition-values"),
        }
        if self.mode == "items":
            builder |= {"count_url": reverse("console:condition-count"), "block_url": reverse("console:block")}
        context["widget"]["builder"] = builder
        return context
