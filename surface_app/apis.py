from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from graph_app.interface import item_exists
from personalization.access import USER_ID_IN_SESSION_NAMESPACE, user_id_in_session_namespace, user_key_of
from personalization.authentication import shopper_binding_check
from personalization.models import ApiScope
from personalization.rate_limits import RateLimitCheck
from personalization.services import ApiClient
from personalization.validation import item_id_validate
from scoring_app.interface import similar_items
from surface_app.serving.slates import Slate, context_items_parse, slate_serve

K_MAX = 100


class CandidateSerializer(serializers.Serializer):
    item_id = serializers.CharField()
    score = serializers.FloatField()
    source = serializers.CharField(help_text="The retrieval source that found the item first.")
    explanation = serializers.CharField()


class SlateItemSerializer(CandidateSerializer):
    sources = serializers.ListField(child=serializers.CharField(), help_text="Every retrieval source that found it.")
    propensity = serializers.FloatField(
        allow_null=True, help_text="When the contextual bandit chose the item: the probability it had of being chosen."
    )
    rules = serializers.ListField(child=serializers.CharField(), help_text="The business rules that touched it.")


class SlateExperimentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    variant = serializers.CharField()


class SlateSerializer(serializers.Serializer):
    request_id = serializers.CharField()
    placement = serializers.CharField()
    items = SlateItemSerializer(many=True)
    confidence = serializers.FloatField()
    model_version = serializers.CharField(allow_null=True)
    path = serializers.ChoiceField(
        choices=["ranker", "bandit", "fallback", "popularity"],
        help_text="What chose the items; `popularity`: an experiment's holdout variant (no personalization).",
    )
    degraded = serializers.ListField(child=serializers.CharField())
    experiment = SlateExperimentSerializer(
        allow_null=True, help_text="The placement's running experiment and the shopper's variant; null outside one."
    )


class RecommendationsApi(APIView):
    required_scope = ApiScope.PUBLIC
    checks_shopper_token = True
    # The key's rate limit is taken in the request's state round trip (`slate_serve`), not in one of its own.
    throttle_classes: list[type[BaseThrottle]] = []

    class QuerySerializer(serializers.Serializer):
        user_id = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
        session_id = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
        placement = serializers.CharField(max_length=100, required=False, default="default")
        k = serializers.IntegerField(
            min_value=1, max_value=K_MAX, required=False, default=None, help_text="Default: the placement's size."
        )
        item_id = serializers.CharField(
            max_length=200,
            required=False,
            default="",
            allow_blank=True,
            help_text="Context items (a product page's item, a cart), comma-separated: retrieval starts from them.",
        )

        def validate(self, attrs: dict[str, object]) -> dict[str, object]:
            if not attrs["user_id"] and not attrs["session_id"]:
                raise serializers.ValidationError({"user_id": ["Either user_id or session_id is required."]})
            if user_id_in_session_namespace(str(attrs["user_id"])):
                raise serializers.ValidationError({"user_id": [USER_ID_IN_SESSION_NAMESPACE]})
            return attrs

    @extend_schema(parameters=[QuerySerializer], responses=SlateSerializer, operation_id="recommendations_get")
    def get(self, request: Request) -> Response:
        # The same validation as `QuerySerializer(data=...).is_valid(raise_exception=True)`, by one instance made
        # once: a new serializer deep-copies its fields on every request, a tenth of a millisecond on the hottest
        # endpoint. Validating keeps no state on the instance (`surface_app.fast_path` shares it).
        data = recommendations_query.run_validation(request.query_params)
        shopper_binding_check(request, user_keys={recommendations_user_key(data)})
        client = request.auth if isinstance(request.auth, ApiClient) else None
        return Response(recommendations_serve(data, rate_limit=client.rate_limit() if client else None).as_dict())


recommendations_query = RecommendationsApi.QuerySerializer()


def recommendations_user_key(query: dict[str, Any]) -> str:
    return user_key_of(user_id=query["user_id"], session_id=query["session_id"])


def recommendations_serve(query: dict[str, Any], *, rate_limit: RateLimitCheck | None) -> Slate:
    """The slate for a validated recommendations query (the view's, and `surface_app.fast_path`'s); a key's
    `rate_limit` is taken on the way (RateLimitExceeded)."""
    return slate_serve(
        user_key=recommendations_user_key(query), placement=query["placement"], k=query["k"],
        context_items=context_items_parse(query["item_id"]), rate_limit=rate_limit,
    )  # fmt: skip


class SimilarItemsApi(APIView):
    required_scope = ApiScope.PUBLIC
    checks_shopper_token = True  # about an item, no shopper: a bound key may ask

    class QuerySerializer(serializers.Serializer):
        k = serializers.IntegerField(min_value=1, max_value=K_MAX, required=False, default=10)

    @extend_schema(
        parameters=[QuerySerializer, OpenApiParameter("item_id", str, OpenApiParameter.PATH)],
        responses=inline_serializer(
            "SimilarItems", {"item_id": serializers.CharField(), "items": CandidateSerializer(many=True)}
        ),
        operation_id="items_similar",
    )
    def get(self, request: Request, item_id: str) -> Response:
        item_id_validate(item_id)
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        if not item_exists(external_id=item_id):
            raise NotFound(f"No item with item_id '{item_id}'.")
        candidates = similar_items(item_id=item_id, k=query.validated_data["k"])
        return Response({"item_id": item_id, "items": [candidate.retrieved() for candidate in candidates]})
