from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery

from graph_app.model_registry import admin as _model_registry_admin  # noqa: F401  # registers ModelVersion
from graph_app.models import Entity, Item, ItemEntity, ItemNeighbour, ItemPopularity
from graph_app.services import EntityRef, ItemInput, item_delete, item_upsert
from graph_app.state import admin as state_admin  # noqa: F401  (registers the event log's and event types' admin)


class ItemEntityInline(admin.TabularInline):
    model = ItemEntity
    extra = 0
    autocomplete_fields = ["entity"]


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = [
        "external_id",
        "title",
        "category",
        "price",
        "in_stock",
        "embedding_source",
        "popularity",
        "updated_at",
    ]
    list_filter = ["in_stock", "embedding_source", "category"]
    search_fields = ["external_id", "title"]
    readonly_fields = ["embedding_source", "popularity", "created_at", "updated_at"]
    inlines = [ItemEntityInline]

    def get_queryset(self, request) -> QuerySet[Item]:
        score = ItemPopularity.objects.filter(item_id=OuterRef("external_id")).values("score")[:1]
        return super().get_queryset(request).annotate(popularity_score=Subquery(score))

    @admin.display(description="popularity", ordering="popularity_score")
    def popularity(self, obj: Item) -> float:
        return round(getattr(obj, "popularity_score", None) or 0.0, 3)

    def get_readonly_fields(self, request, obj=None):
        # The storefront's id names the item everywhere (API, event log, Redis): set once, at creation.
        return [*self.readonly_fields, "external_id"] if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change) -> None:
        """Nothing yet: save_related writes the item together with its entities."""

    def save_related(self, request, form, formsets, change) -> None:
        """Through the catalog service, like the API, so the change reaches Redis (catalog facts, vector,
        entities, similar-items cache) after commit."""
        refs = []
        for formset in formsets:
            formset.save(commit=False)  # only for the admin's change message: the service writes the links
            refs += [
                EntityRef(
                    kind=row["entity"].kind,
                    external_id=row["entity"].external_id,
                    name=row["entity"].name,
                    weight=row["weight"],
                )
                for row in (inline.cleaned_data for inline in formset.forms)
                if row and row.get("entity") and not row.get("DELETE")
            ]
        item = form.instance
        result = item_upsert(
            data=ItemInput(
                external_id=item.external_id,
                title=item.title,
                description=item.description,
                category=item.category,
                price=item.price,
                in_stock=item.in_stock,
                attributes=item.attributes,
                entities=tuple(refs),
            )
        )
        item.pk = result.item.pk  # the admin's log entry and redirect name the stored row

    def delete_model(self, request, obj) -> None:
        item_delete(item=obj)

    def delete_queryset(self, request, queryset) -> None:
        for item in queryset:
            item_delete(item=item)


@admin.register(Entity)
class EntityAdmin(admin.ModelAdmin):
    list_display = ["kind", "external_id", "name"]
    list_filter = ["kind"]
    search_fields = ["external_id", "name"]


@admin.register(ItemNeighbour)
class ItemNeighbourAdmin(admin.ModelAdmin):
    """Read only: the hourly neighbourhood refresh replaces every row."""

    list_display = ["item_id", "neighbour_id", "score", "source", "via", "via_name", "refreshed_at"]
    list_filter = ["source"]
    search_fields = ["item_id", "neighbour_id", "via"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
