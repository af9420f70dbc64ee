from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from signals_app.models import DeadLetter, IdentityLink
from signals_app.services import dead_letters_replay


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["created_at", "stream", "entry_id", "deliveries", "short_error", "replayed_at"]
    list_filter = ["stream", ("replayed_at", admin.EmptyFieldListFilter)]
    search_fields = ["entry_id", "payload", "error"]
    readonly_fields = ["stream", "entry_id", "payload", "error", "deliveries", "created_at", "replayed_at"]
    actions = ["replay_selected"]

    @admin.action(description="Replay the selected dead letters (queue them for the log again)")
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        replayed = dead_letters_replay(dead_letter_ids=queryset.values_list("pk", flat=True))
        self.message_user(request, f"{replayed} dead letters queued again; already replayed ones were left alone.")

    @admin.display(description="error")
    def short_error(self, obj: DeadLetter) -> str:
        return obj.error[:120]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False


@admin.register(IdentityLink)
class IdentityLinkAdmin(admin.ModelAdmin):
    list_display = ["session_id", "user_id", "linked_at"]
    search_fields = ["session_id", "user_id"]
    readonly_fields = ["session_id", "user_id", "linked_at"]
