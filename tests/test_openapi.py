"""The published OpenAPI document declares what the server answers (docs/api-contract.md).

The fuzzing run (test_openapi_fuzz.py) checks the answers against the document; these tests pin
the document's own promises, fast and without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from clarion.app import create_app
from clarion.config import Settings


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(var_dir=tmp_path_factory.mktemp("openapi")), workers=False)
    return app.openapi()


@pytest.fixture
async def bare_api(tmp_path: Path) -> Any:
    """The app without its lifespan: routing and error handlers only, no database."""
    app = create_app(Settings(var_dir=tmp_path), workers=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as client:
        yield client


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_errors_are_batch_errors_never_422(document: dict[str, Any]) -> None:
    assert document["components"]["schemas"]["Error"]["required"] == ["code", "message"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in operations(document):
        assert "422" not in operation["responses"], (method, path)
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


def test_each_operation_declares_the_errors_it_can_answer(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        declared = set(operation["responses"])
        assert "400" in declared, (method, path)  # bad input, or a body over the limit
        # Every API route takes a key, but the health probes (docs/security.md says why).
        assert "401" in declared or path in {"/healthz", "/readyz"}, (method, path)
        if "{api_key}" in path:
            assert {"403", "404", "405", "429"} <= declared, (method, path)
            assert "Retry-After" in operation["responses"]["429"]["headers"], (method, path)
        assert operation["x-max-body-bytes"] > 0


def test_the_rest_key_is_a_security_scheme(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["RestApiKey"]
    assert scheme == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Authorization",
        "description": "The company's REST API key.",
    }
    send = document["paths"]["/1.1/{api_key}/transactional/send"]["post"]
    assert send["security"] == [{"RestApiKey": []}]
    assert "security" not in document["paths"]["/sdk/v1/{api_key}/webpush/vapid-key"]["get"]


def test_files_are_declared_with_their_content_types(document: dict[str, Any]) -> None:
    paths = document["paths"]
    upload = paths["/{version}/{api_key}/custom-audience/{name}/file"]["put"]
    assert list(upload["requestBody"]["content"]) == ["text/csv"]
    archive = paths["/1.0/{api_key}/gdpr/request/{request_id}/data"]["get"]
    assert list(archive["responses"]["200"]["content"]) == ["application/zip"]
    results = paths["/1.0/{api_key}/export/request/{request_id}/results/{file_name}"]["get"]
    assert list(results["responses"]["200"]["content"]) == ["text/csv"]
    deleted = paths["/1.0/{api_key}/imports/{name}"]["delete"]["responses"]["204"]
    assert "content" not in deleted


def test_a_nullable_field_a_response_leaves_out_is_not_required(
    document: dict[str, Any],
) -> None:
    # GET one audience drops null fields (as Batch does): its description may be absent.
    audience = document["components"]["schemas"]["AudienceRead"]
    assert "description" not in audience["required"]
    assert "name" in audience["required"]
    # A request schema keeps what the server requires.
    assert "type" in document["components"]["schemas"]["ReplaceV10"]["required"]


def test_dashboard_pages_stay_out_of_the_document(document: dict[str, Any]) -> None:
    assert not [path for path in document["paths"] if path.startswith("/dashboard")]


def test_one_audience_url_is_one_path(document: dict[str, Any]) -> None:
    assert set(document["paths"]["/1.0/{api_key}/custom-audience/{name}"]) == {
        "get",
        "put",
        "patch",
        "delete",
    }
    assert "/{version}/{api_key}/custom-audience/{name}" not in document["paths"]


async def test_a_405_allows_every_method_of_the_url(bare_api: httpx.AsyncClient) -> None:
    # PUT and PATCH, GET and DELETE are four routes at one URL: Starlette named only the first.
    response = await bare_api.request("OPTIONS", "/1.0/KEY/custom-audience/x")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, PUT, PATCH, DELETE"
    assert response.json() == {"code": 20, "message": "ROUTE_NOT_FOUND: method not allowed"}


def test_a_push_landing_is_declared_in_both_its_forms(document: dict[str, Any]) -> None:
    """`landing` with `contents[]`, or Batch's flat form: the server takes both (inapp.md)."""
    landing = {"$ref": "#/components/schemas/PushLanding", "components": document["components"]}
    validator = jsonschema.Draft202012Validator(landing)
    assert validator.is_valid({"theme": "promo", "contents": [{"language": "en", "body": "Hi"}]})
    assert validator.is_valid({"theme": "promo", "title": "Hi", "actions": []})
    assert not validator.is_valid({"title": "Hi", "contents": [{"language": "en", "body": "Hi"}]})
