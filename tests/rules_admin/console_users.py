"""Helpers for the console's tests: real users in the real groups (created by rules_admin's migration), forms."""

from __future__ import annotations

from django.contrib.auth.models import Group


def console_user(django_user_model, username: str, group: str | None):
    from django.apps import apps

    from rules_admin.roles import roles_sync

    # A transactional test's flush empties the groups table; migrate would top it up, the tests do it themselves.
    roles_sync(apps=apps)
    user = django_user_model.objects.create_user(username, password="console-test-pw", is_staff=True)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


def rule_form(**fields: object) -> dict[str, object]:
    """The business rule form as the admin posts it (its dates are split into a date and a time)."""
    data: dict[str, object] = {
        "name": "rule", "kind": "boost", "placement": "", "priority": "0", "enabled": "on", "valid_from_0": "",
        "valid_from_1": "", "valid_until_0": "", "valid_until_1": "", "condition": "{}", "audience": "{}",
        "factor": "2.0", "item_ids": "", "slot": "", "campaign": "",
    }  # fmt: skip
    data.update(fields)
    return data


def form_errors(response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code
    return {field: list(messages) for field, messages in response.context["adminform"].form.errors.items()}
