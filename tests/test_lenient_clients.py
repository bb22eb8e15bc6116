"""Requests as Batch's client libraries write them (Ruby, PHP, Go, Python, Node): optional fields
sent as null, numeric ids, trailing slashes. Accepted as Batch accepts them; what is really
malformed stays refused (docs of each route say which is which)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from clarion.custom_data.models import ProfileAttribute, ProfileTag
from clarion.delivery.models import DeliveryBatch, Send
from clarion.events.models import TrackedEvent
from clarion.runtime import Runtime
from tests.conftest import ClientApp


async def batches_of(runtime: Runtime, app: ClientApp) -> list[dict[str, list[Any]]]:
    async with runtime.sessions() as session:
        rows = await session.scalars(
            select(DeliveryBatch.recipients)
            .join(Send, Send.id == DeliveryBatch.send_id)
            .where(Send.app_id == app.app_id)
            .order_by(DeliveryBatch.id)
        )
        return list(rows)


async def send(api: httpx.AsyncClient, app: ClientApp, body: dict[str, Any]) -> httpx.Response:
    return await api.post(
        f"/1.1/{app.api_key}/transactional/send", headers=app.headers(), json=body
    )


class TestNullIsAbsent:
    async def test_transactional_send_with_every_optional_field_null(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # What a client that serialises unset fields writes (Go without omitempty, PHP arrays
        # with null members, Ruby's nil).
        body = {
            "group_id": "welcome",
            "recipients": {
                "custom_ids": ["u1"],
                "install_ids": None,
                "tokens": None,
                "advertising_ids": None,
            },
            "message": {"title": None, "body": "Hello"},
            "messages": None,
            "labels": None,
            "deeplink": None,
            "custom_payload": None,
            "media": None,
            "priority": None,
            "time_to_live": None,
            "gcm_collapse_key": None,
            "push_type": None,
            "sandbox": None,
            "template_id": None,
        }
        response = await send(api, ios_app, body)
        assert response.status_code == 201, response.text
        assert await batches_of(runtime, ios_app) == [{"custom_ids": ["u1"]}]
        async with runtime.sessions() as session:
            stored = await session.scalar(select(Send).where(Send.app_id == ios_app.app_id))
        assert stored is not None
        assert stored.content == {"message": {"body": "Hello"}, "push_type": "alert", "labels": []}

    async def test_php_empty_arrays_where_objects_go(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # PHP's json_encode writes an empty associative array as [].
        body = {
            "group_id": "g",
            "recipients": {"custom_ids": ["u1"]},
            "message": {"body": "Hello"},
            "media": [],
            "gcm_collapse_key": [],
            "messages": [],
        }
        response = await send(api, ios_app, body)
        assert response.status_code == 201, response.text
        events = await api.post(
            f"/1.0/{ios_app.api_key}/events/users/u1",
            headers=ios_app.headers(),
            json={"events": [{"name": "ue.paid", "attributes": []}]},
        )
        assert events.status_code == 202, events.text
        # A list where a list goes is a list: an empty recipient list stays empty.
        empty = await send(api, ios_app, {**body, "recipients": {"custom_ids": []}})
        assert empty.status_code == 400
        assert empty.json()["message"].startswith("MALFORMED_PARAMETER: recipients: give at")

    async def test_a_null_required_field_is_missing(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await send(
            api, ios_app, {"group_id": "g", "recipients": None, "message": {"body": "x"}}
        )
        assert response.status_code == 400
        assert response.json() == {
            "code": 30,
            "message": "MISSING_PARAMETER: recipients is required",
        }

    async def test_null_keeps_its_meaning_where_the_spec_gives_it_one(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        url = f"/1.0/{ios_app.api_key}/data/users/u1"
        first = {"values": {"u.city": "Lyon", "ut.interests": ["a"]}}
        assert (await api.post(url, headers=ios_app.headers(), json=first)).status_code == 200
        cleared = {"values": {"u.city": None, "ut.interests": None}}
        assert (await api.post(url, headers=ios_app.headers(), json=cleared)).status_code == 200
        async with runtime.sessions() as session:
            for model in (ProfileAttribute, ProfileTag):
                rows = await session.scalars(select(model).where(model.app_id == ios_app.app_id))
                assert list(rows) == []
        # The SDK API: null clears a field of the installation, absent leaves it.
        sdk = f"/sdk/v1/{ios_app.api_key}/installations/i1"
        await api.put(sdk, json={"custom_id": "u1", "language": "fr"})
        installation = (await api.put(sdk, json={"custom_id": None})).json()
        assert (installation["custom_id"], installation["language"]) == (None, "fr")

    async def test_null_in_a_list_stays_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {
            "group_id": "g",
            "recipients": {"custom_ids": ["a", None]},
            "message": {"body": "x"},
        }
        response = await send(api, ios_app, body)
        assert response.status_code == 400
        assert response.json()["message"].startswith("MALFORMED_PARAMETER: recipients.custom_ids.1")


class TestNumbersAsIds:
    async def test_transactional_ids_group_and_labels(
        self, api: httpx.AsyncClient, android_app: ClientApp, runtime: Runtime
    ) -> None:
        body = {
            "group_id": 2024,
            "recipients": {"custom_ids": [42, "43"], "install_ids": [7], "advertising_ids": [9]},
            "labels": [1],
            "message": {"body": "Hello"},
        }
        response = await send(api, android_app, body)
        assert response.status_code == 201, response.text
        assert await batches_of(runtime, android_app) == [
            {"custom_ids": ["42", "43"], "install_ids": ["7"], "advertising_ids": ["9"]}
        ]
        async with runtime.sessions() as session:
            stored = await session.scalar(select(Send).where(Send.app_id == android_app.app_id))
        assert stored is not None
        assert (stored.group_id, stored.content["labels"]) == ("2024", ["1"])

    async def test_trigger_events_bulk_with_integer_ids(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # The client of spec Appendix B sends `"id": 1`.
        body = [{"id": 1, "events": [{"name": "ue.paid", "label": 5, "tags": [3]}]}]
        response = await api.post(
            f"/1.0/{ios_app.api_key}/events/users", headers=ios_app.headers(), json=body
        )
        assert response.status_code == 202, response.text
        async with runtime.sessions() as session:
            event = await session.scalar(
                select(TrackedEvent).where(TrackedEvent.app_id == ios_app.app_id)
            )
        assert event is not None
        assert (event.custom_id, event.label, event.tags) == ("1", "5", ["3"])

    async def test_custom_data_bulk_ids_and_tags(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        body = [{"id": 77, "update": {"values": {"u.points": 5, "ut.levels": [1, "2"]}}}]
        response = await api.post(
            f"/1.0/{ios_app.api_key}/data/users", headers=ios_app.headers(), json=body
        )
        assert response.status_code == 200, response.text
        async with runtime.sessions() as session:
            points = await session.scalar(
                select(ProfileAttribute).where(ProfileAttribute.app_id == ios_app.app_id)
            )
            tags = await session.scalars(
                select(ProfileTag.tag).where(ProfileTag.app_id == ios_app.app_id)
            )
            assert sorted(tags) == ["1", "2"]
        assert points is not None
        assert (points.custom_id, points.number_value) == ("77", 5.0)  # a number stays a number

    async def test_audience_ids(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.put(
            f"/1.0/{ios_app.api_key}/custom-audience/vip",
            headers=ios_app.headers(),
            json={"type": "custom_ids", "ids": [1, 2, "3"]},
        )
        assert response.status_code == 202, response.text
        view = await api.get(
            f"/1.0/{ios_app.api_key}/custom-audience/vip", headers=ios_app.headers()
        )
        assert view.json()["nb_ids"] == 3

    @pytest.mark.parametrize(
        ("ids", "why"),
        [
            ([True], "Input should be a valid string"),
            ([1.5], "Input should be a valid string"),
            ([{"id": "a"}], "Input should be a valid string"),
            ([["a"]], "Input should be a valid string"),
        ],
    )
    async def test_what_is_not_an_id_stays_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp, ids: list[Any], why: str
    ) -> None:
        body = {"group_id": "g", "recipients": {"custom_ids": ids}, "message": {"body": "x"}}
        response = await send(api, ios_app, body)
        assert response.status_code == 400
        assert response.json() == {
            "code": 31,
            "message": f"MALFORMED_PARAMETER: recipients.custom_ids.0: {why}",
        }

    async def test_a_number_where_no_id_is_expected_stays_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {"group_id": "g", "recipients": {"custom_ids": ["a"]}, "message": {"body": 5}}
        response = await send(api, ios_app, body)
        assert response.status_code == 400
        assert response.json()["message"].startswith("MALFORMED_PARAMETER: message.body")


def _concrete(path: str, app: ClientApp) -> str:
    """A route's path with its key, and parameters naming nothing (no call changes anything)."""
    path = path.replace("{api_key}", app.api_key).replace("{version}", "1.1")
    return re.sub(r"{[^}]+}", "nothing", path.replace("{app_id}", "0"))


class TestTrailingSlash:
    async def test_every_route_answers_both_spellings_without_redirect(
        self, api: httpx.AsyncClient, ios_app: ClientApp, clarion_app: FastAPI
    ) -> None:
        """Both spellings of every documented route get the same answer, never a redirect."""
        checked = 0
        for path, operations in clarion_app.openapi()["paths"].items():
            url = _concrete(path, ios_app)
            for method in operations:
                bare = await api.request(method, url, headers=ios_app.headers())
                slashed = await api.request(method, url + "/", headers=ios_app.headers())
                assert bare.status_code < 300 or bare.status_code >= 400, (method, url)
                assert slashed.status_code == bare.status_code, (method, url, slashed.text)
                checked += 1
        assert checked > 50

    async def test_batch_routes_with_a_trailing_slash(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        key, headers = ios_app.api_key, ios_app.headers()
        sent = await api.post(
            f"/1.0/{key}/transactional/send/",
            headers=headers,
            json={"group_id": "g", "recipients": {"custom_ids": ["a"]}, "message": {"body": "x"}},
        )
        assert sent.status_code == 201, sent.text
        data = await api.post(
            f"/1.0/{key}/data/users/",
            headers=headers,
            json=[{"id": "a", "update": {"values": {"u.x": 1}}}],
        )
        assert data.status_code == 200, data.text
        events = await api.post(
            f"/1.0/{key}/events/users/",
            headers=headers,
            json=[{"id": "a", "events": [{"name": "ue.x"}]}],
        )
        assert events.status_code == 202, events.text
        listed = await api.get(f"/1.1/{key}/campaigns/list/", headers=headers)
        assert (listed.status_code, listed.json()) == (200, [])

    async def test_dashboard_pages_answer_both_spellings(self, api: httpx.AsyncClient) -> None:
        for path in ("/dashboard/login", "/dashboard/login/"):
            page = await api.get(path)
            assert page.status_code == 200, path
        # The home page, signed out: both spellings go to the sign-in page.
        for path in ("/dashboard", "/dashboard/"):
            home = await api.get(path)
            assert home.status_code == 303
            assert home.headers["location"].startswith("/dashboard/login")


class TestUndeclaredJson:
    @pytest.mark.parametrize(
        "content_type", [None, "application/x-www-form-urlencoded", "text/plain; charset=utf-8"]
    )
    async def test_a_json_body_is_read_whatever_its_declared_type(
        self, api: httpx.AsyncClient, ios_app: ClientApp, content_type: str | None
    ) -> None:
        headers = ios_app.headers()
        if content_type is not None:
            headers["Content-Type"] = content_type
        body = b'{"group_id": "g", "recipients": {"custom_ids": ["a"]}, "message": {"body": "x"}}'
        response = await api.post(
            f"/1.1/{ios_app.api_key}/transactional/send", headers=headers, content=body
        )
        assert response.status_code == 201, response.text

    @pytest.mark.parametrize(
        "body",
        [
            b"group_id=g&message=x",
            b'{"group_id": "\xff"}',
            b'{"time_to_live": 1' + b"0" * 5000 + b"}",
        ],
    )
    async def test_a_body_that_is_not_json_is_malformed_json(
        self, api: httpx.AsyncClient, ios_app: ClientApp, body: bytes
    ) -> None:
        headers = {**ios_app.headers(), "Content-Type": "application/x-www-form-urlencoded"}
        response = await api.post(
            f"/1.1/{ios_app.api_key}/transactional/send", headers=headers, content=body
        )
        assert response.status_code == 400
        assert response.json()["code"] == 32, response.text


class TestTheSchemaSaysSo:
    """The published OpenAPI declares what is accepted: clients generated from it, and the
    fuzzing run, agree with the server."""

    def test_request_schemas_declare_null_numbers_and_empty_arrays(
        self, clarion_app: FastAPI
    ) -> None:
        schemas = clarion_app.openapi()["components"]["schemas"]

        def kinds(prop: dict[str, Any]) -> set[str | None]:
            return {choice.get("type") for choice in prop.get("anyOf", [prop])}

        send = schemas["TransactionalSend"]
        fields = send["properties"]
        assert kinds(fields["labels"]) == {"array", "null"}
        assert kinds(fields["labels"]["anyOf"][0]["items"]) == {"string", "integer"}
        assert kinds(fields["group_id"]) == {"string", "integer", "null"}
        assert fields["group_id"]["anyOf"][0]["pattern"] == r"^[A-Za-z0-9_\-]{1,128}$"
        assert kinds(fields["media"]) == {None, "null", "array"}  # None: the $ref
        assert kinds(fields["sandbox"]) == {"boolean", "null"}
        # A required field sent as null is missing: the schema keeps it non-null.
        assert "recipients" in send["required"]
        assert "anyOf" not in fields["recipients"]
        recipients = schemas["Recipients"]["properties"]
        assert kinds(recipients["advertising_ids"]) == {"array", "null"}
        # Where null has its own meaning the field was nullable already, and stays so.
        installation = schemas["InstallationUpsert"]["properties"]
        assert kinds(installation["custom_id"]) == {"string", "integer", "null"}
