from django.contrib import admin

from graph_app.models import Entity, Item, ItemEntity, Shopper


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
