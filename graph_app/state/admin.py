"""The admin of the event log and of custom event types (registered by `graph_app.admin`)."""

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from django.utils.functional import cached_property

from graph_app.state.custom_types import custom_event_type_delete, custom_event_type_save
from graph_app.state.event_types import BUILT_IN_EVENT_TYPES
from graph_app.state.log import event_log_estimated_count
from graph_app.state.models import CustomEventType, Event


class EventTypeFilter(admin.SimpleListFilter):
    """The known types, without scanning the log for its distinct values."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request, model_admin):  # type: ignore[no-untyped-def]
        custom = CustomEventType.objects.values_list("name", flat=True)
        return [(name, name) for name in sorted({*BUILT_IN_EVENT_TYPES, *custom})]

    def queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        return queryset.filter(type=self.value()) if self.value() else queryset


class AttributedFilter(admin.SimpleListFilter):
    title = "attributed to a served slate"
    parameter_name = "attributed"

    def lookups(self, request, model_admin):  # type: ignore[no-untyped-def]
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        if self.value() == "yes":
            return queryset.exclude(attributed_source="")
        if self.value() == "no":
            return queryset.filter(attributed_source="")
        return queryset


class EventLogPaginator(Paginator):
    """The unfiltered log is counted from the planner's statistics: count(*) would read every partition."""

    @cached_property
    def count(self) -> int:
        if not self.object_list.query.where:
            estimate = event_log_estimated_count()
            if estimate:
                return estimate
        return super().count


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["event_id", "type", "user_id", "session_id", "item_id", "placement", "occurred"]
    # Date ranges filter in SQL; a date hierarchy would read every row's date, and one stored before year 1 (UTC)
    # cannot be read into Python.
    list_filter = [EventTypeFilter, AttributedFilter, ("occurred_at", admin.DateFieldListFilter)]
    search_fields = ["event_id", "user_id", "item_id"]
    search_help_text = "An exact event id, user id or item id."
    show_full_result_count = False
    paginator = EventLogPaginator

    # The detail page shows the same text forms: a stored field is never read into Python there either.
    fields = [
        "event_id", "type", "user_id", "session_id", "item_id", "placement", "request_id", "slot", "value",
        "occurred", "received_at", "context_json", "attributed_placement", "attributed_slot",
        "attributed_model_version", "attributed_score", "attributed_source",
    ]  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        """The log is append-only and keeps whatever it was once sent: the pages read the time and the context as
        PostgreSQL's text, so no stored value (a year before 1, a context nested too deep for Python's JSON
        parser) can fail them."""
        return (
            super()
            .get_queryset(request)
            .defer("occurred_at", "context")
            .annotate(occurred_at_text=Cast("occurred_at", TextField()), context_text=Cast("context", TextField()))
        )

    @admin.display(description="occurred at", ordering="occurred_at")
    def occurred(self, obj: Event) -> str:
        return str(getattr(obj, "occurred_at_text", ""))

    @admin.display(description="context")
    def context_json(self, obj: Event) -> str:
        return str(getattr(obj, "context_text", ""))

    def get_search_results(self, request, queryset, search_term):  # type: ignore[no-untyped-def]
        """Exact matches, which the log's indexes answer (a substring search would read every partition)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(event_id=term) | Q(user_id=term) | Q(item_id=term)), False

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # events enter through the API or the import, which keep event ids unique

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False  # the log is append-only

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(CustomEventType)
class CustomEventTypeAdmin(admin.ModelAdmin):
    list_display = ["name", "needs_item", "popularity_weight", "marks_interest", "description"]
    search_fields = ["name"]

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        custom_event_type_save(event_type=obj)  # the form already ran the model's validation

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        custom_event_type_delete(event_type=obj)

    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        for event_type in queryset:
            custom_event_type_delete(event_type=event_type)
