"""The console's shoppers: a row is never deleted alone but erased everywhere (`operations.erasure`), so the admin of
Graph's shopper model lives here, with the erasure it calls."""

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType

from graph_app.interface import erased_shopper_repr
from graph_app.models import Shopper
from operations.erasure import shopper_erase


@admin.register(Shopper)
class ShopperAdmin(admin.ModelAdmin):
    list_display = ["external_id", "created_at", "updated_at"]
    search_fields = ["external_id"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["erase"]

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting the row alone would leave the shopper's events, state and vectors behind: erase instead.
        return False

    @admin.action(description="Erase the selected users everywhere (events, state, vectors...)", permissions=["erase"])
    def erase(self, request, queryset) -> None:
        content_type = ContentType.objects.get_for_model(Shopper)
        for shopper_id, external_id in queryset.values_list("pk", "external_id"):
            counts = shopper_erase(user_id=external_id).as_dict()
            del counts["user_id"]
            # Recorded in the console's history by row number and counts: the history does not name whom.
            LogEntry.objects.create(
                user_id=request.user.pk,
                content_type=content_type,
                object_id=str(shopper_id),
                object_repr=erased_shopper_repr(shopper_id),
                action_flag=DELETION,
                change_message="Erased: " + ", ".join(f"{value} {name}" for name, value in counts.items()),
            )
            self.message_user(request, f"Erased {erased_shopper_repr(shopper_id)}: {counts}", messages.SUCCESS)

    def has_erase_permission(self, request) -> bool:
        return request.user.has_perm("graph_app.delete_shopper")
