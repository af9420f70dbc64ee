"""The experiments' API (admin keys): `POST /api/v1/experiments` creates one, running or a draft;
`GET /api/v1/experiments/{id}` reads it; `POST /api/v1/experiments/{id}/stop` stops it. The serializers check the
body's types (as the schema declares them); `surface_app.experiments.services` checks the rest."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from personalization.models import ApiScope
from personalization.schema import ERROR_COMPONENT
from personalization.validation import StrictBooleanField, StrictCharField
from surface_app.experiments import services
from surface_app.experiments.models import Experiment
from surface_app.experiments.selectors import experiment_get
from surface_app.models import FALLBACKS, RETRIEVAL_SOURCES

EXPERIMENT_ID_PATTERN = re.compile(r"[0-9]{1,18}")  # within PostgreSQL's bigint
CONFLICT_RESPONSE = OpenApiResponse(
    response={"$ref": f"#/components/schemas/{ERROR_COMPONENT}"},
    description="Another experiment is already running on the placement (`code: conflict`).",
)
EXPERIMENT_ID_PARAMETER = OpenApiParameter("experiment_id", int, OpenApiParameter.PATH)


class StrictIntegerField(serializers.IntegerField):
    """A JSON whole number, as the schema declares it: not "3" or 3.0."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class StrictFloatField(serializers.FloatField):
    """A JSON number, as the schema declares it: not "1.5"."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return float(super().to_internal_value(data))


class ExperimentTreatmentSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=services.TREATMENT_KINDS)
    version = StrictCharField(required=False, max_length=60, help_text="`model`: the registered model version.")
    sources = serializers.ListField(
        child=serializers.ChoiceField(choices=RETRIEVAL_SOURCES),
        required=False,
        min_length=1,
        help_text="`sources`: the retrieval sources to use.",
    )
    rule_set = StrictCharField(
        required=False, max_length=services.NAME_MAX_LENGTH, help_text="`rules`: the rule set (or `fallback`)."
    )
    fallback = serializers.ChoiceField(
        choices=FALLBACKS, required=False, help_text="`rules`: the fallback to serve (or `rule_set`)."
    )


class ExperimentVariantSerializer(serializers.Serializer):
    name = StrictCharField(max_length=services.VARIANT_NAME_MAX_LENGTH)
    weight = StrictIntegerField(min_value=1, max_value=services.WEIGHT_MAX, help_text="Its share of the shoppers.")
    treatment = ExperimentTreatmentSerializer()


class ExperimentGuardrailsSerializer(serializers.Serializer):
    serving_p99_ms = StrictFloatField(
        required=False, allow_null=True, min_value=0, help_text="Serving p99 limit in ms (positive); null: none."
    )
    degraded_rate = StrictFloatField(
        required=False, allow_null=True, min_value=0, max_value=1,
        help_text="Share of degraded slates allowed (above 0, at most 1); null: none.",
    )  # fmt: skip


class ExperimentInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=services.NAME_MAX_LENGTH)
    placement = StrictCharField(max_length=100, help_text="The placement's name.")
    primary_metric = serializers.ChoiceField(choices=Experiment.Metric.values)
    variants = serializers.ListField(
        child=ExperimentVariantSerializer(), min_length=services.VARIANTS_MIN, max_length=services.VARIANTS_MAX
    )
    guardrails = ExperimentGuardrailsSerializer(required=False, default=dict)
    start = StrictBooleanField(required=False, default=True, help_text="false: create a draft.")


class ExperimentSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    placement = serializers.CharField(source="placement.name")
    primary_metric = serializers.ChoiceField(choices=Experiment.Metric.values)
    variants = ExperimentVariantSerializer(many=True)
    guardrails = serializers.SerializerMethodField()
    status = serializers.ChoiceField(choices=Experiment.Status.values)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    stopped_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(ExperimentGuardrailsSerializer)
    def get_guardrails(self, experiment: Experiment) -> dict[str, float | None]:
        return {"serving_p99_ms": experiment.guardrail_p99_ms, "degraded_rate": experiment.guardrail_degraded_rate}


def _experiment_id(text: str) -> int:
    """The id from the path (a string route, so that a key out of scope gets its 403 whatever the path holds)."""
    if not EXPERIMENT_ID_PATTERN.fullmatch(text):
        raise NotFound(f"No experiment with id '{text}'.")
    return int(text)


class ExperimentCreateApi(APIView):
    required_scope = ApiScope.ADMIN  # the console's and operators' API

    @extend_schema(
        request=ExperimentInputSerializer,
        responses={201: ExperimentSerializer, 409: CONFLICT_RESPONSE},
        operation_id="experiment_create",
        description="Create an experiment on a placement, running at once (`start: false`: a draft). At most one "
        "runs on a placement.",
    )
    def post(self, request: Request) -> Response:
        serializer = ExperimentInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        experiment = services.experiment_create(**serializer.validated_data)
        return Response(ExperimentSerializer(experiment).data, status=status.HTTP_201_CREATED)


class ExperimentDetailApi(APIView):
    required_scope = ApiScope.ADMIN

    @extend_schema(parameters=[EXPERIMENT_ID_PARAMETER], responses=ExperimentSerializer, operation_id="experiment_get")
    def get(self, request: Request, experiment_id: str) -> Response:
        experiment = experiment_get(experiment_id=_experiment_id(experiment_id))
        if experiment is None:
            raise NotFound(f"No experiment with id {experiment_id}.")
        return Response(ExperimentSerializer(experiment).data)


class ExperimentStopApi(APIView):
    required_scope = ApiScope.ADMIN

    @extend_schema(
        parameters=[EXPERIMENT_ID_PARAMETER],
        request=None,
        responses=ExperimentSerializer,
        operation_id="experiment_stop",
        description="Stop the experiment (a draft too); stopping a stopped one changes nothing.",
    )
    def post(self, request: Request, experiment_id: str) -> Response:
        experiment = services.experiment_stop(experiment_id=_experiment_id(experiment_id))
        return Response(ExperimentSerializer(experiment).data)
