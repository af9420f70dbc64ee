"""The experiments' API (admin keys): `POST /api/v1/experiments` creates one, running or a draft, and
`GET /api/v1/experiments` lists them; `GET /api/v1/experiments/{id}` reads one, `POST .../start` starts a draft,
`POST .../stop` stops it and `GET .../results` judges it (`surface_app.experiments.results`). The serializers check
the body's types (as the schema declares them); `surface_app.experiments.services` checks the rest."""

from __future__ import annotations

import math
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
from surface_app.experiments.results import ExperimentResults, experiment_results
from surface_app.experiments.selectors import experiment_get, experiments_list
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


class ExperimentListQuerySerializer(serializers.Serializer):
    placement = StrictCharField(required=False, max_length=100, help_text="Only this placement's (by name).")
    status = serializers.ChoiceField(choices=Experiment.Status.values, required=False, help_text="Only these.")


class ExperimentCreateApi(APIView):
    required_scope = ApiScope.ADMIN  # the console's and operators' API

    @extend_schema(
        parameters=[ExperimentListQuerySerializer],
        responses=ExperimentSerializer(many=True),
        operation_id="experiment_list",
        description="The experiments, newest first (at most 200), of one placement or status if asked.",
    )
    def get(self, request: Request) -> Response:
        query = ExperimentListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        experiments = experiments_list(**query.validated_data)
        return Response(ExperimentSerializer(experiments, many=True).data)

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


class ExperimentStartApi(APIView):
    required_scope = ApiScope.ADMIN

    @extend_schema(
        parameters=[EXPERIMENT_ID_PARAMETER],
        request=None,
        responses={200: ExperimentSerializer, 409: CONFLICT_RESPONSE},
        operation_id="experiment_start",
        description="Start a draft (409 while another experiment runs on its placement). A running one stays as it "
        "is; a stopped one cannot start again (400 naming `status`).",
    )
    def post(self, request: Request, experiment_id: str) -> Response:
        experiment = services.experiment_start(experiment_id=_experiment_id(experiment_id))
        return Response(ExperimentSerializer(experiment).data)


class FiniteFloatField(serializers.FloatField):
    """A number, or null where the statistic is undefined (no shoppers yet, no variance): JSON has no NaN."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, read_only=True, **kwargs)

    def to_representation(self, value: Any) -> float | None:
        number = float(value)
        return number if math.isfinite(number) else None


class RateSerializer(serializers.Serializer):
    value = FiniteFloatField(help_text="The ratio of sums (RPM: per thousand impressions).")
    std_error = FiniteFloatField(help_text="Delta-method standard error, clustered by shopper.")
    low = FiniteFloatField(help_text="95% interval, low end.")
    high = FiniteFloatField(help_text="95% interval, high end.")


class VariantResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    weight = serializers.IntegerField()
    treatment = ExperimentTreatmentSerializer()
    shoppers = serializers.IntegerField()
    impressions = serializers.IntegerField()
    clicks = serializers.IntegerField(help_text="Impressions clicked (attributed clicks; twice on one counts once).")
    add_to_carts = serializers.IntegerField()
    purchases = serializers.IntegerField()
    revenue = serializers.FloatField()
    ctr = RateSerializer(source="rates.ctr")
    add_to_cart_rate = RateSerializer(source="rates.add_to_cart_rate")
    conversion_rate = RateSerializer(source="rates.conversion_rate", help_text="Purchases per impression.")
    rpm = RateSerializer(source="rates.rpm", help_text="Revenue per thousand impressions.")
    slates = serializers.IntegerField()
    p99_serving_ms = FiniteFloatField(help_text="Serving p99 over its slates (ms).")
    degraded_rate = FiniteFloatField(help_text="Share of its slates served degraded.")


class LiftIntervalSerializer(serializers.Serializer):
    lift = FiniteFloatField(help_text="Relative lift over the first variant (0.1: +10%).")
    low = FiniteFloatField()
    high = FiniteFloatField()
    p_value = FiniteFloatField()


class LiftResultSerializer(serializers.Serializer):
    variant = serializers.CharField()
    metric = serializers.CharField(help_text="The metric, named as `primary_metric` names them.")
    plain = LiftIntervalSerializer(help_text="Fixed-horizon 95% interval (valid at one planned look).")
    cuped = LiftIntervalSerializer(
        allow_null=True, help_text="The same after CUPED (null: no pre-exposure activity to adjust with)."
    )
    cuped_variance_reduction = FiniteFloatField()
    sequential = LiftIntervalSerializer(help_text="Always-valid 95% interval (mSPRT): valid at every look.")


class SampleRatioSerializer(serializers.Serializer):
    observed = serializers.DictField(child=serializers.IntegerField(), help_text="Shoppers per variant.")
    expected = serializers.DictField(child=serializers.FloatField(), help_text="Shoppers the weights expect.")
    chi_square = FiniteFloatField()
    p_value = FiniteFloatField()
    alarm = serializers.BooleanField(help_text="p < 0.001: the split is broken; trust no other number.")


class GuardrailBreachSerializer(serializers.Serializer):
    variant = serializers.CharField()
    guardrail = serializers.ChoiceField(choices=["p99_ms", "degraded_rate"])
    value = serializers.FloatField()
    limit = serializers.FloatField()


class DailyPointSerializer(serializers.Serializer):
    variant = serializers.CharField()
    day = serializers.DateField()
    impressions = serializers.IntegerField()
    clicks = serializers.IntegerField()
    add_to_carts = serializers.IntegerField()
    purchases = serializers.IntegerField()
    revenue = serializers.FloatField()


class ExperimentResultsSerializer(serializers.Serializer):
    experiment = ExperimentSerializer()
    variants = VariantResultSerializer(many=True)
    lifts = LiftResultSerializer(many=True, help_text="Each variant after the first, on each metric; primary first.")
    sample_ratio = SampleRatioSerializer(allow_null=True, help_text="Null before any shopper was served.")
    guardrail_breaches = GuardrailBreachSerializer(many=True)
    daily = DailyPointSerializer(many=True, help_text="Per variant per UTC day of the impressions.")
    verdict = serializers.CharField(
        help_text='"winner: <variant>", "no difference yet", "stop: SRM" or "guardrail breached: ...".'
    )
    summary = serializers.CharField(help_text="The verdict in a sentence.")
    pre_exposure_days = serializers.IntegerField(help_text="CUPED's window before each shopper's first exposure.")


class ExperimentResultsApi(APIView):
    required_scope = ApiScope.ADMIN

    @extend_schema(
        parameters=[EXPERIMENT_ID_PARAMETER],
        responses=ExperimentResultsSerializer,
        operation_id="experiment_results",
        description="Per variant: shoppers, impressions, outcomes and rates with 95% intervals (delta method, "
        "clustered by shopper); each variant's lift over the first (plain, CUPED, always-valid); the sample-ratio "
        "check; guardrail breaches; a daily series; the verdict.",
    )
    def get(self, request: Request, experiment_id: str) -> Response:
        results: ExperimentResults = experiment_results(experiment_id=_experiment_id(experiment_id))
        return Response(ExperimentResultsSerializer(results).data)
