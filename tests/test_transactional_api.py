"""Transactional API 1.1: the documented request/response shapes and every rejection (spec §3)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from clarion.delivery.models import DeliveryBatch, Send
from clarion.runtime import Runtime
from tests.conftest import ClientApp

MINIMAL = {
    "group_id": "welcome",
    "recipients": {"custom_ids": ["599ed1d2e8373c8806be063e"]},
    "message": {"title": "Hello!", "body": "How's it going?"},
}


async def send(
    api: httpx.AsyncClient, app: ClientApp, body: Any, *, version: str = "1.1", **kwargs: Any
) -> httpx.Response:
    return await api.post(
        f"/{version}/{app.api_key}/transactional/send",
        headers=kwargs.pop("headers", app.headers()),
        json=body,
        **kwargs,
    )


async def stored_counts(runtime: Runtime) -> tuple[int, int]:
    async with runtime.sessions() as session:
        sends = await session.scalar(select(func.count()).select_from(Send))
        batches = await session.scalar(select(func.count()).select_from(DeliveryBatch))
    return sends or 0, batches or 0


class TestAccepted:
    async def test_minimal_request_answers_201_with_a_uuid_token(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await send(api, ios_app, MINIMAL)
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"token"}
        assert uuid.UUID(body["token"]).version == 4

    async def test_version_1_0_alias(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await send(api, ios_app, MINIMAL, version="1.0")
        assert response.status_code == 201

    async def test_every_documented_field_is_accepted_and_stored(
        self, api: httpx.AsyncClient, android_app: ClientApp, runtime: Runtime
    ) -> None:
        body = {
            "group_id": "order-shipped_2",
            "recipients": {
                "tokens": ["tok-aaaaaaaaaaaaaaaa"],
                "custom_ids": ["u1"],
                "install_ids": ["i1"],
            },
            "messages": {
                "en": {"title": "Shipped", "body": "On its way"},
                "fr": {"body": "En route"},
            },
            "deeplink": "myapp://orders/42",
            "custom_payload": '{"order": 42, "tags": ["a"]}',
            "media": {
                "icon": "https://cdn.example.com/i.png",
                "picture": "https://cdn.example.com/p.jpg",
            },
            "priority": "high",
            "time_to_live": 3600,
            "push_type": "alert",
            "gcm_collapse_key": {"enabled": True, "key": "orders"},
            "labels": ["orders", "shipping"],
            "sandbox": False,
            "wp_template": "generic",  # obsolete Batch field: ignored, not refused
        }
        response = await send(api, android_app, body)
        assert response.status_code == 201
        async with runtime.sessions() as session:
            stored = await session.scalar(
                select(Send).where(Send.token == response.json()["token"])
            )
        assert stored is not None
        assert stored.group_id == "order-shipped_2"
        assert stored.content["messages"]["fr"] == {"body": "En route"}
        assert stored.content["gcm_collapse_key"] == {"enabled": True, "key": "orders"}
        assert stored.expires_at is not None
        assert "wp_template" not in stored.content

    async def test_recipients_are_split_into_batches(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        ids = [f"user-{n}" for n in range(2500)]
        body = {**MINIMAL, "recipients": {"custom_ids": ids}}
        response = await send(api, ios_app, body)
        assert response.status_code == 201
        async with runtime.sessions() as session:
            stored = await session.scalar(
                select(Send).where(Send.token == response.json()["token"])
            )
            assert stored is not None
            batches = (
                await session.scalars(
                    select(DeliveryBatch).where(DeliveryBatch.send_id == stored.id)
                )
            ).all()
        sizes = sorted(len(b.recipients["custom_ids"]) for b in batches)
        assert sizes == [500, 1000, 1000]

    async def test_background_push_needs_no_message(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {"group_id": "sync", "recipients": {"install_ids": ["x"]}, "push_type": "background"}
        assert (await send(api, ios_app, body)).status_code == 201


class TestRejected:
    """Each rejection answers in Batch's error format and stores nothing."""

    @pytest.mark.parametrize(
        ("mutate", "status", "code", "field"),
        [
            (lambda b: b.pop("group_id"), 400, 30, "group_id"),
            (lambda b: b.pop("recipients"), 400, 30, "recipients"),
            (lambda b: b.pop("message"), 400, 30, "message"),
            (lambda b: b["message"].pop("body"), 400, 30, "message.body"),
            (lambda b: b.update(priority="urgent"), 400, 31, "priority"),
            (lambda b: b.update(custom_payload="[1, 2]"), 400, 31, "custom_payload"),
            (lambda b: b.update(custom_payload="{not json"), 400, 31, "custom_payload"),
            (lambda b: b.update(custom_payload='{"com.batch": {}}'), 400, 31, "custom_payload"),
            (lambda b: b.update(custom_payload={"a": 1}), 400, 31, "custom_payload"),
            (lambda b: b.update(group_id="bad group!"), 400, 31, "group_id"),
            (lambda b: b.update(time_to_live=0), 400, 31, "time_to_live"),
            (lambda b: b.update(time_to_live=2419201), 400, 31, "time_to_live"),
            (lambda b: b.update(labels=["a", "b", "c", "d"]), 400, 31, "labels"),
            (lambda b: b.update(recipients={}), 400, 31, "recipients"),
            (
                lambda b: b.update(recipients={"custom_ids": [f"u{n}" for n in range(11000)]}),
                400,
                31,
                "recipients",
            ),
            (
                lambda b: b.update(media={"picture": "http://insecure.example.com/p.png"}),
                400,
                31,
                "media.picture",
            ),
            (lambda b: b.update(messages={"en": {"body": "x"}}), 400, 31, "mutually exclusive"),
        ],
    )
    async def test_bad_field(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        mutate: Any,
        status: int,
        code: int,
        field: str,
    ) -> None:
        body = orjson.loads(orjson.dumps(MINIMAL))
        mutate(body)
        before = await stored_counts(runtime)
        response = await send(api, ios_app, body)
        assert response.status_code == status
        error = response.json()
        assert error["code"] == code
        assert field in error["message"]
        assert await stored_counts(runtime) == before

    async def test_malformed_json(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.post(
            f"/1.1/{ios_app.api_key}/transactional/send",
            headers={**ios_app.headers(), "Content-Type": "application/json"},
            content=b'{"group_id": "x", ',
        )
        assert response.status_code == 400
        assert response.json()["code"] == 32

    async def test_body_that_is_not_an_object(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await send(api, ios_app, [1, 2, 3])
        assert (response.status_code, response.json()["code"]) == (400, 32)

    async def test_body_over_one_mebibyte(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        before = await stored_counts(runtime)
        body = {**MINIMAL, "message": {"body": "x" * (1024 * 1024 + 10)}}
        response = await send(api, ios_app, body)
        assert response.status_code == 400
        assert response.json()["code"] == 31
        assert "body" in response.json()["message"]
        assert await stored_counts(runtime) == before

    async def test_missing_rest_key(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await send(api, ios_app, MINIMAL, headers={})
        assert (response.status_code, response.json()["code"]) == (401, 10)

    async def test_unknown_rest_key(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await send(api, ios_app, MINIMAL, headers={"X-Authorization": "0" * 32})
        assert (response.status_code, response.json()["code"]) == (401, 10)

    async def test_unknown_app_key(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.post(
            "/1.1/DEADBEEF00000000000000000000BEEF/transactional/send",
            headers=ios_app.headers(),
            json=MINIMAL,
        )
        assert (response.status_code, response.json()["code"]) == (401, 10)

    async def test_unknown_route_is_batch_404(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/1.1/KEY/nothing/here")
        assert (response.status_code, response.json()["code"]) == (404, 20)


class TestTenancy:
    async def test_a_company_cannot_use_another_companys_app_key(
        self, api: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        from tests.conftest import new_app

        mine = await new_app(runtime, None, "ios")
        theirs = await new_app(runtime, None, "ios")
        response = await api.post(
            f"/1.1/{theirs.api_key}/transactional/send", headers=mine.headers(), json=MINIMAL
        )
        assert (response.status_code, response.json()["code"]) == (401, 10)

    async def test_a_send_is_invisible_to_another_app(
        self, api: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        from tests.conftest import new_app

        mine = await new_app(runtime, None, "ios")
        other = await new_app(runtime, None, "ios")
        token = (await send(api, mine, MINIMAL)).json()["token"]
        own = await api.get(
            f"/1.1/{mine.api_key}/transactional/sends/{token}", headers=mine.headers()
        )
        assert own.status_code == 200
        foreign = await api.get(
            f"/1.1/{other.api_key}/transactional/sends/{token}", headers=other.headers()
        )
        assert (foreign.status_code, foreign.json()["code"]) == (404, 20)
