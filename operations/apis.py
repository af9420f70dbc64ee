"""The API of what drives several layers: `DELETE /api/v1/users/{user_id}` erases a shopper everywhere
(`operations.erasure`). The URL's `PUT` (traits) is Graph's: this view extends Graph's and the URL serves it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from graph_app.apis import UserTraitsApi
from operations.erasure import shopper_erase
from personalization.validation import user_id_validate

ERASURE_COUNTS = (
    "shoppers", "sessions", "events", "impressions", "bandit_decisions", "identity_links", "dead_letters",
    "feature_rows", "stream_entries", "redis_keys", "cached_slates",
)  # fmt: skip
USER_ERASURE_RESPONSE = inline_serializer(
    "UserErasure",
    {"user_id": serializers.CharField(), **{name: serializers.IntegerField(min_value=0) for name in ERASURE_COUNTS}},
)


class UserApi(UserTraitsApi):
    """`PUT /api/v1/users/{user_id}`: the user's traits (rule audiences and compliance filters match on them);
    `DELETE`: the shopper erased everywhere (`operations.erasure`)."""

    @extend_schema(
        request=None,
        responses={200: USER_ERASURE_RESPONSE},
        operation_id="user_erase",
        description="Erase the shopper everywhere (events, impressions, identity links and linked sessions, training "
        "rows, traits, online state, user vector, cached slates, entries not yet consumed); the counts erased. "
        "An unknown user is erased too: every count 0.",
    )
    def delete(self, request: Request, user_id: str) -> Response:
        user_id_validate(user_id)
        return Response(shopper_erase(user_id=user_id).as_dict())
