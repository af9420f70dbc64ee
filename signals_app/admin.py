from django.contrib import admin

from signals_app.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["event_id", "type", "user_id", "session_id", "item_id", "placement", "occurred_at"]
    list_filter = ["type"]
    search_fields = ["event_id", "user_id", "session_id", "item_id"]
    date_hierarchy = "occurred_at"
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False  # the log is append-only
