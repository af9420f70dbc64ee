from django.contrib import admin

from graph_app.models import Entity, Item, ItemEntity, ItemNeighbour, Shopper


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


@admin.register(Shopper)
class ShopperAdmin(admin.ModelAdmin):
    list_display = ["external_id", "created_at", "updated_at"]
    search_fields = ["external_id"]
    readonly_fields = ["created_at", "updated_at"]


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
