from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from personalization.models import ApiKey
from personalization.services import api_key_create, api_key_revoke, api_key_update

# What staff set on a key (the form checks them with the model's own rules, `ApiKey.clean`).
KEY_SETTINGS = ["name", "scope", "rate_limit_per_second", "requires_shopper_token"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "prefix", "scope", "rate_limit_per_second", "created_at", "revoked_at"]
    list_filter = ["scope", "revoked_at"]
    search_fields = ["name", "prefix"]
    fields = [*KEY_SETTINGS, "prefix", "created_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "revoked_at"]
    actions = ["revoke_selected"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: object, change: bool) -> None:
        key_settings = {
            "name": obj.name,
            "scope": obj.scope,
            "rate_limit_per_second": obj.rate_limit_per_second,
            "requires_shopper_token": obj.requires_shopper_token,
        }
        if change:
            api_key_update(api_key=obj, **key_settings)
            return
        created = api_key_create(**key_settings)
        obj.pk = created.api_key.pk
        obj.prefix = created.api_key.prefix
        messages.warning(request, f"New API key (shown only now, copy it): {created.raw_key}")

    @admin.action(permissions=["change"], description="Revoke selected API keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")
