from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

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
from personalization.errors import flatten_errors
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
from surface_app.services import shelves_catalog_batch


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


class ItemBatchUpsertApi(APIView):
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
                "created": serializers.IntegerField(),
                "updated": serializers.IntegerField(),
                "errors": ItemBatchErrorSerializer(many=True),
                "results": ItemBatchResultSerializer(many=True),
            },
        ),
        operation_id="items_batch_upsert",
    )
    @shelves_catalog_batch()  # the live shelves hear of the whole batch in one message
    def post(self, request: Request) -> Response:
        envelope = self.InputSerializer(data=request.data)
        envelope.is_valid(raise_exception=True)
        projection = content_projection()
        created = updated = 0
        errors: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for index, row in enumerate(envelope.validated_data["items"]):
            serializer = ItemBatchRowSerializer(data=row) if isinstance(row, dict) else None
            if serializer is None or not serializer.is_valid():
                row_errors = (
                    flatten_errors(serializer.errors) if serializer is not None else {"item": ["Must be an object."]}
                )
                for field_name, messages in row_errors.items():
                    errors.append({"index": index, "field": field_name, "message": messages[0]})
                item_id = row.get("item_id") if isinstance(row, dict) else None
                results.append(
                    {"index": index, "item_id": item_id if isinstance(item_id, str) else None, "status": "error"}
                )
                continue
            result = item_upsert(data=serializer.to_input(serializer.validated_data["item_id"]), projection=projection)
            created += result.created
            updated += not result.created
            results.append(
                {
                    "index": index,
                    "item_id": result.item.external_id,
                    "status": "created" if result.created else "updated",
                }
            )
        return Response({"created": created, "updated": updated, "errors": errors, "results": results})


USER_TRAITS_RESPONSE = inline_serializer(
    "UserTraits", {"user_id": serializers.CharField(), "traits": JsonObjectField()}
)


ERASURE_COUNTS = (
    "shoppers", "sessions", "events", "impressions", "bandit_decisions", "identity_links", "dead_letters",
    "feature_rows", "stream_entries", "redis_keys", "cached_slates",
)  # fmt: skip
USER_ERASURE_RESPONSE = inline_serializer(
    "UserErasure",
    {"user_id": serializers.CharField(), **{name: serializers.IntegerField(min_value=0) for name in ERASURE_COUNTS}},
)


class UserTraitsApi(APIView):
    """`PUT /api/v1/users/{user_id}`: the user's traits (rule audiences and compliance filters match on them);
    `DELETE`: the shopper erased everywhere (`graph_app.erasure`)."""

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

    @extend_schema(
        request=None,
        responses={200: USER_ERASURE_RESPONSE},
        operation_id="user_erase",
        description="Erase the shopper everywhere (events, impressions, identity links and linked sessions, training "
        "rows, traits, online state, user vector, cached slates, entries not yet consumed); the counts erased. "
        "An unknown user is erased too: every count 0.",
    )
    def delete(self, request: Request, user_id: str) -> Response:
        from graph_app.erasure import shopper_erase

        user_id_validate(user_id)
        return Response(shopper_erase(user_id=user_id).as_dict())
