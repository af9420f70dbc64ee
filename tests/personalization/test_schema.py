"""The OpenAPI schema (personalization.schema, drf-spectacular): generated without a warning, JSON bodies only,
every error status declared; and schemathesis, bounded, finds the live API true to it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.management import call_command
from django.urls import path as url_path
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.management.commands.spectacular import SchemaGenerationError
from drf_spectacular.utils import extend_schema
from hypothesis import HealthCheck, settings
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView
from schemathesis.checks import CHECKS

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(api_client) -> dict[str, Any]:
    response = api_client.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, path_item in schema["paths"].items()
        for method, operation in path_item.items()
        if method in {"get", "put", "post", "patch", "delete"}
    ]


def test_the_schema_generates_without_a_warning(tmp_path):
    # A warning (two components of one name, a view it cannot describe) fails: the schema would be wrong.
    GENERATOR_STATS.reset()  # the warnings of earlier generations in this process
    call_command("spectacular", "--file", str(tmp_path / "schema.yaml"), "--validate", "--fail-on-warn")


class _FirstApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={204: None})
    def post(self, request: Any) -> Response:
        return Response(status=204)


class _SecondApi(APIView):
    class InputSerializer(serializers.Serializer):
        session_id = serializers.CharField()

    @extend_schema(request=InputSerializer, responses={204: None})
    def post(self, request: Any) -> Response:
        return Response(status=204)


urlpatterns = [url_path("first", _FirstApi.as_view()), url_path("second", _SecondApi.as_view())]


def test_two_components_of_one_name_fail_the_generation(tmp_path, settings):
    # What the generation test above guards against: both serializers would be the component "Input".
    settings.ROOT_URLCONF = __name__
    GENERATOR_STATS.reset()
    with pytest.raises(SchemaGenerationError):
        call_command("spectacular", "--file", str(tmp_path / "schema.yaml"), "--fail-on-warn")
    GENERATOR_STATS.reset()


def test_component_names_are_unique_in_the_served_schema(schema):
    generator = SchemaGenerator()
    generator.get_schema(request=None, public=True)
    names = [component.name for component in generator.registry._components.values() if component.type == "schemas"]

    assert len(names) == len(set(names))
    assert {"IdentifyInputRequest", "UserTraitsInputRequest", "EventRequest", "EventBatchRequest"} <= set(
        schema["components"]["schemas"]
    )


def test_every_body_is_json_and_every_error_status_is_declared_with_the_error_body(schema):
    operations = _operations(schema)
    error = {"$ref": "#/components/schemas/Error"}

    assert len(operations) >= 11
    for path, method, operation in operations:
        if "requestBody" in operation:
            assert list(operation["requestBody"]["content"]) == ["application/json"], (method, path)
            assert operation["requestBody"]["required"] is True, (method, path)
        for status in ("400", "401", "403", "429", "503") + (("404",) if "{" in path else ()):
            body = operation["responses"][status]["content"]["application/json"]["schema"]
            if (operation["operationId"], status) == ("events_ingest", "503"):
                continue  # the error shape and what was applied: below
            assert body == error, (method, path)
        for status, response in operation["responses"].items():
            assert set(response.get("content", {})) <= {"application/json"}, (method, path, status)
        limited, unavailable = operation["responses"]["429"], operation["responses"]["503"]
        assert {name for name, header in limited["headers"].items() if header["required"]} == {
            "Retry-After", "RateLimit", "RateLimit-Policy",
        }  # fmt: skip
        assert list(unavailable["headers"]) == ["Retry-After"]
    assert schema["components"]["schemas"]["Error"]["required"] == ["detail", "code", "errors", "message"]


def test_an_ingest_503_declares_the_error_shape_and_which_events_were_applied(schema):
    (operation,) = [op for _, _, op in _operations(schema) if op["operationId"] == "events_ingest"]
    body = operation["responses"]["503"]["content"]["application/json"]["schema"]
    component = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]

    assert sorted(component["required"]) == ["code", "detail", "errors", "message"]
    for name in ("applied", "not_applied", "unknown"):
        assert component["properties"][name]["items"] == {"type": "integer", "minimum": 0}


def test_events_take_one_event_or_a_batch_and_users_declare_created(schema):
    events = schema["paths"]["/api/v1/events"]["post"]
    users = schema["paths"]["/api/v1/users/{user_id}"]["put"]

    assert schema["components"]["schemas"]["EventIngestBodyRequest"]["oneOf"] == [
        {"$ref": "#/components/schemas/EventRequest"},
        {"$ref": "#/components/schemas/EventBatchRequest"},
    ]
    assert events["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventIngestBodyRequest"
    }
    assert {"200", "201"} <= set(users["responses"])


# schemathesis: a fixed number of examples an operation, from a fixed seed, against the live server (the fast path
# in front of Django, as gunicorn serves it), with a real API key.
EXAMPLES_PER_OPERATION = 12
SCHEMATHESIS_SEED = 17


def bad_input_names_its_field(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 400 says which field was refused."""
    if response.status_code == 400:
        body = response.json()
        assert body["errors"], f"400 without a field: {body}"
    return None


def _generated_schema() -> dict[str, Any]:
    """What `manage.py spectacular` writes and /api/v1/schema/ serves, as JSON types (dates as strings)."""
    return json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))


# Every check schemathesis has, on every operation: the free-form JSON bodies (traits, attributes, context,
# properties) too, whose bounds (32 levels, 64-bit integers, no NUL) are refused with a 400 naming the field.
ALL_CHECKS = list(CHECKS.get_all())

# Built when the module is collected: schemathesis makes a test an operation from it.
live_schema = schemathesis.openapi.from_dict(
    _generated_schema(),
    config=schemathesis.Config.from_dict(
        {
            "seed": SCHEMATHESIS_SEED,
            "generation": {"max-examples": EXAMPLES_PER_OPERATION, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "operations": [
                {
                    # One of user_id and session_id is required, which OpenAPI cannot say of query parameters;
                    # bad_input_names_its_field holds that 400 to naming user_id.
                    "include-operation-id": "recommendations_get",
                    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", 400, 401, 403, 404, 429]}},
                },
            ],
        }
    ),
)


def test_the_served_schema_is_the_generated_one(schema):
    assert schema == _generated_schema()


@pytest.fixture
def storefront_server(live_server) -> Iterator[str]:
    """The live server as gunicorn serves the project (config.wsgi): the recommendations fast path in front."""
    from surface_app.fast_path import recommendations_fast_path

    httpd = live_server.thread.httpd
    django_application = httpd.get_app()
    httpd.set_app(recommendations_fast_path(django_application))
    yield live_server.url
    httpd.set_app(django_application)


@live_schema.parametrize()
# The server and the key serve every example of an operation: nothing an example does must be undone for the next.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_live_api_keeps_to_its_schema(case, storefront_server, raw_api_key, settings):
    # ignored_auth sends wrong keys by the dozen: past API_AUTH_FAILURES_MAX the address would get its (declared)
    # 429 instead of the 401 the check looks for.
    settings.API_AUTH_FAILURES_MAX = 10_000
    case.call_and_validate(
        base_url=storefront_server,
        headers={"Authorization": f"Bearer {raw_api_key}"},
        checks=[*ALL_CHECKS, bad_input_names_its_field],
    )
