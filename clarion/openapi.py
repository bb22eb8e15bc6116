"""The published OpenAPI document (/openapi.json) says what the server really answers.

FastAPI documents each route's success and a 422 that Clarion never sends (validation errors
become Batch's 400s, clarion.http). This module rewrites the generated document once, in one
place, from what each operation declares: its key (the REST key's security scheme, an app key
in the path), its path parameters, and the body-size limit of its path. A route added later is
covered without declaring anything.
See docs/api-contract.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from clarion.config import Settings
from clarion.http import body_limit

# A file in a request or response body, as routes declare it (`responses=`, `openapi_extra=`).
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": "Batch's error body: a numeric code, and a message that starts with the "
    "code's name and names the field at fault (`MALFORMED_PARAMETER: limit: ...`).",
    "type": "object",
    "properties": {
        "code": {"type": "integer", "title": "Code"},
        "message": {"type": "string", "title": "Message"},
    },
    "required": ["code", "message"],
    "additionalProperties": False,
}

_BAD_REQUEST = (
    "MISSING_PARAMETER (30), MALFORMED_PARAMETER (31) or MALFORMED_JSON_BODY (32): the message "
    "names the field. Also a body over the route's size limit (`x-max-body-bytes`)."
)
_NO_KEY = "AUTHENTICATION_INVALID (10): the key is missing, unknown, or of another company."
_MISUSE = "API_MISUSE (12): the key may not do this (a Dev key on a route that takes the Live key)."
_RATE_LIMITED = (
    "TOO_MANY_REQUESTS (60): over the calls per second of the app key or the company (server "
    "APIs), or of the installation or the client address (SDK API); docs/rate-limits.md."
)
_NOT_FOUND = "ROUTE_NOT_FOUND (20): no such object, or no route for this path."
_NO_METHOD = "ROUTE_NOT_FOUND (20): the path names another route, which takes other methods."

_COMPONENT = "#/components/schemas/"
_PATH_PARAMETER = re.compile(r"\{([^}]+)\}")
# Path parameters whose value decides which body-size limit applies (clarion.http.body_limit).
_SAMPLES = {"version": "1.0"}


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Publish the rewritten document in place of FastAPI's."""
    generate = app.openapi

    def limit(path: str) -> int:
        return body_limit(
            path, settings.max_body_bytes, settings.max_bulk_body_bytes, settings.max_upload_bytes
        )

    rewritten: list[int] = []  # id() of the document last rewritten: FastAPI regenerates it
    # when routes are added after the first call.

    def openapi() -> dict[str, Any]:
        document = generate()
        if rewritten != [id(document)]:
            declare_errors(document, limit)
            rewritten[:] = [id(document)]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def declare_errors(document: dict[str, Any], body_limit: Callable[[str], int]) -> None:
    """Read from the document alone, not FastAPI's route objects (whose shape changes between
    FastAPI releases): the key routes are those with the REST key's security requirement or an
    app key in the path, which is how Batch's URLs carry it."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for path, operations in document.get("paths", {}).items():
        parameters = set(_PATH_PARAMETER.findall(path))
        # A request path of the route, to find the body-size limit that applies to it.
        limit = body_limit(_PATH_PARAMETER.sub(lambda m: _SAMPLES.get(m[1], "x"), path))
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            # Every request can be refused: the body-size limit applies even to a GET's body.
            errors = {"400": _BAD_REQUEST}
            if operation.get("security") or "api_key" in parameters:
                errors["401"] = _NO_KEY
            if "api_key" in parameters:
                errors["403"] = _MISUSE
                errors["429"] = _RATE_LIMITED
            if parameters:
                # A parameter holding an encoded "/" reaches another path, or none.
                errors["404"] = _NOT_FOUND
                errors["405"] = _NO_METHOD
            for status, description in errors.items():
                responses.setdefault(status, _error(description))
            if "429" in errors:
                responses["429"]["headers"] = {"Retry-After": _RETRY_AFTER}
            operation["x-max-body-bytes"] = limit
    _nullable_may_be_absent(document)


def _nullable_may_be_absent(document: dict[str, Any]) -> None:
    """Routes with `response_model_exclude_none` leave out a field that is null (as Batch
    does, e.g. an audience's `description`), which pydantic still lists as required. In the
    schemas only responses use, a nullable field is therefore not required; schemas that
    requests use too keep their `required`, which the server enforces."""
    components = document["components"]["schemas"]
    requests: set[str] = set()
    responses: set[str] = set()
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            _referenced(operation.get("requestBody"), components, requests)
            _referenced(operation.get("parameters"), components, requests)
            _referenced(operation.get("responses"), components, responses)
    for name in sorted(responses - requests):
        schema = components[name]
        properties = schema.get("properties", {})
        required = [f for f in schema.get("required", []) if not _nullable(properties.get(f, {}))]
        if required:
            schema["required"] = required
        else:
            schema.pop("required", None)


def _referenced(node: Any, components: dict[str, Any], found: set[str]) -> None:
    """Adds to `found` the component schemas `node` refers to, directly or not."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith(_COMPONENT):
            name = ref.removeprefix(_COMPONENT)
            if name not in found:
                found.add(name)
                _referenced(components.get(name), components, found)
        for value in node.values():
            _referenced(value, components, found)
    elif isinstance(node, list):
        for value in node:
            _referenced(value, components, found)


def _nullable(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    return (
        kinds == "null"
        or (isinstance(kinds, list) and "null" in kinds)
        or any(_nullable(choice) for choice in schema.get("anyOf", ()))
    )


_RETRY_AFTER: dict[str, Any] = {
    "description": "Seconds to wait before calling again (at least 1).",
    "schema": {"type": "integer", "minimum": 1},
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _COMPONENT + "Error"}}},
    }
