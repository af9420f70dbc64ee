"""How drf-spectacular describes the API in the OpenAPI schema: the API key scheme, JSON bodies, and the error
responses every operation can answer, declared once here rather than on each view."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

ERROR_COMPONENT = "Error"

# The one error body (personalization.exception_handler); `message` repeats `detail` for Segment's libraries.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": 'Every API error: {"detail", "code", "errors": {field: [messages]}, "message"}.',
    "properties": {
        "detail": {"type": "string", "description": "What went wrong, for a person."},
        "code": {"type": "string", "description": "What went wrong, for a program: invalid, not_found, ..."},
        "errors": {
            "type": "object",
            "description": "The messages of each field that was refused (empty when no field is to blame).",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "message": {"type": "string", "description": "The same as detail (Segment's and RudderStack's field)."},
    },
    "required": ["detail", "code", "errors", "message"],
}

RETRY_AFTER_HEADER = {
    "required": True,
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}
# draft-ietf-httpapi-ratelimit-headers-09, as personalization.rate_limits sends them with a 429.
RATE_LIMIT_HEADERS = {
    "Retry-After": RETRY_AFTER_HEADER,
    "RateLimit": {
        "required": True,
        "description": 'What remains of the quota, and when a request is allowed again: "key";r=0;t=1.',
        "schema": {"type": "string"},
    },
    "RateLimit-Policy": {
        "required": True,
        "description": 'The quota and its window in seconds: "key";q=100;w=1.',
        "schema": {"type": "string"},
    },
}

# Status -> (description, headers): what every operation of the API may answer besides its own responses.
ERROR_RESPONSES: dict[str, tuple[str, dict[str, Any]]] = {
    "400": ("Bad input: `errors` names each field that was refused.", {}),
    "401": ("Missing, unknown or revoked API key.", {}),
    "403": ("The API key's scope does not allow this operation.", {}),
    "404": ("No such resource.", {}),
    "411": ("A chunked body the server in front did not decode: send a Content-Length.", {}),
    "413": ("The body is over the size limit.", {}),
    "415": ("A Content-Encoding the API does not take (it takes gzip or none).", {}),
    "429": ("Over the API key's request rate: retry after Retry-After seconds.", RATE_LIMIT_HEADERS),
    "503": ("A backing store is unavailable: retry after Retry-After seconds.", {"Retry-After": RETRY_AFTER_HEADER}),
}
HTTP_METHODS = ("get", "put", "post", "patch", "delete")


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "personalization.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return {"type": "http", "scheme": "bearer", "description": "An API key from the admin or create_api_key."}


class JsonBodyAutoSchema(AutoSchema):
    """The ingest views take their body as bytes (a parser for any media type, so that they check its size before
    parsing it): what they read is JSON, and a generated client must send it as JSON."""

    def map_parsers(self) -> list[Any]:
        return list(dict.fromkeys("application/json" if media == "*/*" else media for media in super().map_parsers()))


def error_responses_declare(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """A postprocessing hook: the error component, and on every operation each error status it may answer (404
    where the path names a resource, 411, 413 and 415 where it takes a body) with that component as its body. A
    view's own description and body of a status are kept. Request bodies are marked required."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    for path, path_item in result.get("paths", {}).items():
        for method in HTTP_METHODS:
            operation = path_item.get(method)
            if operation is None:
                continue
            statuses = {"400", "401", "403", "429", "503"}
            if "{" in path:
                statuses.add("404")
            if "requestBody" in operation:
                statuses.update(("411", "413", "415"))
                # Every body the API takes is required (drf-spectacular cannot tell for a oneOf of forms).
                operation["requestBody"]["required"] = True
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses):
                description, headers = ERROR_RESPONSES[status]
                response = responses.setdefault(status, {"description": description})
                # A view that declares its own body for an error (the error shape with more fields) keeps it.
                response.setdefault(
                    "content", {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}}
                )
                if headers:
                    response["headers"] = headers
    return result
