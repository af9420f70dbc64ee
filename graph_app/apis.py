from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from graph_app.catalog_bulk import PATCH_FIELDS, ItemPatch, items_delete_many, items_patch_many, items_upsert_many
from graph_app.item_rows import item_row_read, json_storable, patch_row_read
from graph_app.models import Item
from graph_app.selectors import item_get_with_entities
from graph_app.services import (
    ITEM_BATCH_MAX,
    EntityRef,
    ItemInput,
    content_projection,
    item_delete,
    item_upsert,
)
from personalization.errors import ApplicationError, flatten_errors
from personalization.live_updates import catalog_batch
from personalization.models import ApiScope
from personalization.validation import (
    EXTERNAL_ID_MAX_LENGTH,
    JsonObjectField,
    StrictBooleanField,
    StrictCharField,
    StrictSlugField,
    item_id_validate,
    user_id_validate,
)

T = TypeVar("T")
LONE_SURROGATE = "Text must not hold a lone surrogate (an unpaired \\ud800-\\udfff escape)."


class EntityRefSerializer(serializers.Serializer):
    kind = StrictSlugField(max_length=50)
    id = StrictCharField(max_length=EXTERNAL_ID_MAX_LENGTH)
    name = StrictCharField(max_length=300, required=False, default="", allow_blank=True)
    weight = serializers.FloatField(required=False, default=1.0, min_value=0.0001, max_value=1000)


class ItemInputSerializer(serializers.Serializer):
    title = StrictCharField(max_length=500)
    description = StrictCharField(required=False, default="", allow_blank=True, max_length=20000)
    category = StrictCharField(required=False, default="", allow_blank=True, max_length=200)
    price = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=0, required=False, allow_null=True)
    in_stock = StrictBooleanField(required=False, default=True)
    attributes = JsonObjectField(required=False, default=dict)
    entities = EntityRefSerializer(many=True, required=False, default=list, max_length=100)

    def to_input(self, external_id: str) -> ItemInput:
        data = self.validated_data
        return ItemInput(
            external_id=external_id,
            title=data["title"],
            description=data["description"],
            category=data["category"],
            price=data.get("price"),
            in_stock=data["in_stock"],
            attributes=data["attributes"],
            entities=tuple(
                EntityRef(kind=ref["kind"], external_id=ref["id"], name=ref["name"], weight=ref["weight"])
                for ref in data["entities"]
            ),
        )


class ItemBatchRowSerializer(ItemInputSerializer):
    item_id = StrictCharField(max_length=EXTERNAL_ID_MAX_LENGTH)

    def to_value(self) -> ItemInput:
        return self.to_input(self.validated_data["item_id"])


class ItemOutputSerializer(serializers.Serializer):
    item_id = serializers.CharField(source="external_id")
    title = serializers.CharField()
    description = serializers.CharField()
    category = serializers.CharField()
    price = serializers.DecimalField(max_digits=12, decimal_places=2, allow_null=True, coerce_to_string=False)
    in_stock = serializers.BooleanField()
    attributes = serializers.JSONField()
    entities = serializers.SerializerMethodField()
    embedding_source = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field(EntityRefSerializer(many=True))
    def get_entities(self, item: Item) -> list[dict[str, Any]]:
        return [
            {"kind": link.entity.kind, "id": link.entity.external_id, "name": link.entity.name, "weight": link.weight}
            for link in item.entity_links.all()
        ]


class ItemDetailApi(APIView):
    required_scope = ApiScope.SERVER  # the catalog: a storefront's back end

    @extend_schema(responses=ItemOutputSerializer, operation_id="item_get")
    def get(self, request: Request, item_id: str) -> Response:
        item_id_validate(item_id)
        item = get_object_or_404(item_get_with_entities(), external_id=item_id)
        return Response(ItemOutputSerializer(item).data)

    @extend_schema(
        request=ItemInputSerializer,
        responses={200: ItemOutputSerializer, 201: ItemOutputSerializer},
        operation_id="item_upsert",
    )
    def put(self, request: Request, item_id: str) -> Response:
        item_id_validate(item_id)
        serializer = ItemInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if not json_storable(serializer.validated_data["attributes"]):
            raise ApplicationError(f"attributes: {LONE_SURROGATE}", errors={"attributes": [LONE_SURROGATE]})
        result = item_upsert(data=serializer.to_input(item_id))
        item = item_get_with_entities().get(pk=result.item.pk)
        return Response(
            ItemOutputSerializer(item).data, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        )

    @extend_schema(responses={204: None}, operation_id="item_delete")
    def delete(self, request: Request, item_id: str) -> Response:
        item_id_validate(item_id)
        item = get_object_or_404(Item, external_id=item_id)
        item_delete(item=item)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ItemBatchErrorSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The item's position in the batch.")
    field = serializers.CharField()
    message = serializers.CharField()


class ItemBatchResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    item_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["created", "updated", "error"])


class ItemPatchRowSerializer(serializers.Serializer):
    item_id = StrictCharField(max_length=EXTERNAL_ID_MAX_LENGTH)
    price = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=0, required=False, allow_null=True)
    in_stock = StrictBooleanField(required=False)
    attributes = JsonObjectField(
        required=False, help_text="Merged into the item's attributes at the top level; a key set to null is removed."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        if not PATCH_FIELDS & set(attrs):
            raise serializers.ValidationError({"item": [f"Name at least one of {', '.join(sorted(PATCH_FIELDS))}."]})
        return attrs

    def to_value(self) -> ItemPatch:
        data = self.validated_data
        return ItemPatch(
            external_id=data["item_id"],
            fields=frozenset(PATCH_FIELDS & set(data)),
            price=data.get("price"),
            in_stock=data.get("in_stock", True),
            attributes=data.get("attributes", {}),
        )


# The body of `PATCH /api/v1/items/batch`, declared whole: the rows are partial, the body is not (the schema
# generator would otherwise mark `items` optional, as for any PATCH).
class ItemBatchPatchSerializer(serializers.Serializer):
    items = serializers.ListField(child=ItemPatchRowSerializer(), min_length=1)

    @property
    def partial(self) -> bool:
        return False

    @partial.setter
    def partial(self, value: bool) -> None:
        pass


class ItemPatchResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    item_id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["updated", "missing", "error"])


def _rows_validate(
    rows: list[Any], read: Callable[[Any], T | None], serializer_class: type[serializers.Serializer]
) -> tuple[list[tuple[int, T]], list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The valid rows (index, value), the per-index errors, and the error results by index. Each row is read by
    `read` (graph_app.item_rows: plainly valid rows, without DRF's cost) and otherwise by the serializer, which
    names the errors; its `to_value()` gives the same value as `read`."""
    valid: list[tuple[int, T]] = []
    errors: list[dict[str, Any]] = []
    failed: dict[int, dict[str, Any]] = {}
    for index, row in enumerate(rows):
        value = read(row)
        if value is not None:
            valid.append((index, value))
            continue
        serializer = serializer_class(data=row) if isinstance(row, dict) else None
        if serializer is not None and serializer.is_valid():
            value = serializer.to_value()
            if json_storable(value.attributes):
                valid.append((index, value))
                continue
            row_errors = {"attributes": [LONE_SURROGATE]}
        elif serializer is not None:
            row_errors = flatten_errors(serializer.errors)
        else:
            row_errors = {"item": ["Must be an object."]}
        for field_name, messages in row_errors.items():
            errors.append({"index": index, "field": field_name, "message": messages[0]})
        item_id = row.get("item_id") if isinstance(row, dict) else None
        failed[index] = {"index": index, "item_id": item_id if isinstance(item_id, str) else None, "status": "error"}
    return valid, errors, failed


class ItemBatchUpsertApi(APIView):
    """`POST /api/v1/items/batch`: create or replace up to ITEM_BATCH_MAX items; `PATCH`: change some fields of
    existing ones. Rows are validated one by one (per-index errors), the valid ones written together."""

    required_scope = ApiScope.SERVER

    class InputSerializer(serializers.Serializer):
        items = serializers.ListField(child=serializers.JSONField(), max_length=ITEM_BATCH_MAX, allow_empty=False)

    @extend_schema(
        request=inline_serializer(
            "ItemBatch",
            # Up to ITEM_BATCH_MAX items (not declared: generated batches that large outlast a test's timeout).
            {"items": serializers.ListField(child=ItemBatchRowSerializer(), min_length=1)},
        ),
        responses=inline_serializer(
            "ItemBatchResponse",
            {
                "created": serializers.IntegerField(help_text="Items created (an id sent twice counts once)."),
                "updated": serializers.IntegerField(),
                "errors": ItemBatchErrorSerializer(many=True),
                "results": ItemBatchResultSerializer(many=True),
            },
        ),
        operation_id="items_batch_upsert",
        description="A duplicate item_id within one batch: the last row wins (each of its indexes reports it).",
    )
    @catalog_batch()  # the live shelves hear of the whole batch in one message
    def post(self, request: Request) -> Response:
        envelope = self.InputSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        valid, errors, results = _rows_validate(envelope.validated_data["items"], item_row_read, ItemBatchRowSerializer)
        outcome = items_upsert_many(rows=[row for _, row in valid], projection=content_projection())
        created = set(outcome.created)
        for index, row in valid:
            status_name = "created" if row.external_id in created else "updated"
            results[index] = {"index": index, "item_id": row.external_id, "status": status_name}
        return Response(
            {
                "created": len(outcome.created),
                "updated": len(outcome.updated),
                "errors": errors,
                "results": [results[index] for index in sorted(results)],
            }
        )

    @extend_schema(
        request=ItemBatchPatchSerializer,
        responses=inline_serializer(
            "ItemBatchPatchResponse",
            {
                "updated": serializers.IntegerField(),
                "missing": serializers.IntegerField(help_text="Rows naming an item not in the catalog."),
                "errors": ItemBatchErrorSerializer(many=True),
                "results": ItemPatchResultSerializer(many=True),
            },
        ),
        operation_id="items_batch_patch",
        description="Change only the fields named (price, in_stock, attributes) of up to 1,000 existing items. "
        "attributes merge at the top level (a key set to null is removed). An item_id not in the catalog: status "
        '"missing"; an unknown field or a row naming none of the three: status "error".',
    )
    @catalog_batch()
    def patch(self, request: Request) -> Response:
        envelope = self.InputSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        valid, errors, results = _rows_validate(
            envelope.validated_data["items"], patch_row_read, ItemPatchRowSerializer
        )
        outcome = items_patch_many(patches=[patch for _, patch in valid])
        missing = set(outcome.missing)
        for index, patch in valid:
            status_name = "missing" if patch.external_id in missing else "updated"
            results[index] = {"index": index, "item_id": patch.external_id, "status": status_name}
        ordered = [results[index] for index in sorted(results)]
        return Response(
            {
                "updated": sum(row["status"] == "updated" for row in ordered),
                "missing": sum(row["status"] == "missing" for row in ordered),
                "errors": errors,
                "results": ordered,
            }
        )


class ItemBatchDeleteApi(APIView):
    """`POST /api/v1/items/batch/delete`: delete up to ITEM_BATCH_MAX items (a POST: a DELETE with a body is
    dropped by some proxies and clients)."""

    required_scope = ApiScope.SERVER

    class InputSerializer(serializers.Serializer):
        item_ids = serializers.ListField(
            child=StrictCharField(max_length=EXTERNAL_ID_MAX_LENGTH), min_length=1, max_length=ITEM_BATCH_MAX
        )

    @extend_schema(
        request=inline_serializer(
            "ItemBatchDelete",
            # Up to ITEM_BATCH_MAX ids (not declared, as for the batch upsert).
            {"item_ids": serializers.ListField(child=StrictCharField(max_length=EXTERNAL_ID_MAX_LENGTH), min_length=1)},
        ),
        responses=inline_serializer(
            "ItemBatchDeleteResponse",
            {
                "deleted": serializers.IntegerField(min_value=0),
                "missing": serializers.ListField(
                    child=serializers.CharField(), help_text="The ids not in the catalog, in request order."
                ),
            },
        ),
        operation_id="items_batch_delete",
    )
    @catalog_batch()
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        outcome = items_delete_many(external_ids=data.validated_data["item_ids"])
        return Response({"deleted": len(outcome.deleted), "missing": outcome.missing})


USER_TRAITS_RESPONSE = inline_serializer(
    "UserTraits", {"user_id": serializers.CharField(), "traits": JsonObjectField()}
)


class UserTraitsApi(APIView):
    """`PUT /api/v1/users/{user_id}`: the user's traits (rule audiences and compliance filters match on them);
    `DELETE`: the shopper erased everywhere (`operations.apis.UserApi`, which the URL serves)."""

    required_scope = ApiScope.SERVER  # traits such as an age gate compliance filters: never from a browser

    @extend_schema_serializer(component_name="UserTraitsInput")
    class InputSerializer(serializers.Serializer):
        traits = JsonObjectField()

    @extend_schema(
        request=InputSerializer,
        responses={200: USER_TRAITS_RESPONSE, 201: USER_TRAITS_RESPONSE},
        operation_id="user_traits_put",
    )
    def put(self, request: Request, user_id: str) -> Response:
        from graph_app.services import shopper_traits_set

        user_id_validate(user_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        _, created = shopper_traits_set(external_id=user_id, traits=data.validated_data["traits"])
        return Response(
            {"user_id": user_id, "traits": data.validated_data["traits"]},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
