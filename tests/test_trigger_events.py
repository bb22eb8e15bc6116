"""Trigger Events API 1.0 (spec §9): server-side events stored on custom user ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clarion.events.models import TrackedEvent
from clarion.runtime import Runtime
from tests.conftest import ClientApp, new_app


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def _events_of(runtime: Runtime, app: ClientApp) -> list[TrackedEvent]:
    async with runtime.sessions() as session:
        rows = await session.scalars(
            select(TrackedEvent).where(TrackedEvent.app_id == app.app_id).order_by(TrackedEvent.id)
        )
        return list(rows)


async def _count(runtime: Runtime, app: ClientApp) -> int:
    async with runtime.sessions() as session:
        found = await session.scalar(
            select(func.count()).select_from(TrackedEvent).where(TrackedEvent.app_id == app.app_id)
        )
        return found or 0


class TestAccepted:
    async def test_single_user_events_are_stored_on_the_custom_id(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        response = await api.post(
            f"/1.0/{ios_app.api_key}/events/users/user-42",
            headers=ios_app.headers(),
            json={
                "events": [
                    {
                        "name": "ue.added_to_cart",
                        "label": "checkout",
                        "time": _iso(an_hour_ago),
                        "attributes": {
                            "sku": "A-113",
                            "price": 9.5,
                            "quantity": 2,
                            "gift": False,
                            "date(shipped)": 1_795_000_000,
                            "date(ordered)": "2026-11-20T08:30:00.250",
                        },
                        "tags": ["promo", "winter"],
                    },
                    {"name": "ue.viewed"},
                ]
            },
        )

        assert response.status_code == 202, response.text
        uuid.UUID(response.json()["token"])
        first, second = await _events_of(runtime, ios_app)
        assert (first.custom_id, first.install_id, first.name) == (
            "user-42",
            None,
            "ue.added_to_cart",
        )
        assert first.label == "checkout"
        assert first.occurred_at == an_hour_ago.replace(microsecond=0)
        assert first.tags == ["promo", "winter"]
        assert first.attributes == {
            "sku": "A-113",
            "price": 9.5,
            "quantity": 2,
            "gift": False,
            "date(shipped)": datetime.fromtimestamp(1_795_000_000, UTC).isoformat(),
            "date(ordered)": "2026-11-20T08:30:00.250000+00:00",
        }
        assert second.name == "ue.viewed"
        assert abs((second.occurred_at - datetime.now(UTC)).total_seconds()) < 60  # received now

    async def test_bulk_events_across_users(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        body = [
            {
                "id": "ann",
                "events": [
                    {"name": "ue.taylor_trigger", "attributes": {"location": "Brockton Bay"}}
                ],
            },
            {"id": "bob", "events": [{"name": "ue.a"}, {"name": "ue.b"}]},
        ]

        response = await api.post(
            f"/1.0/{ios_app.api_key}/events/users", headers=ios_app.headers(), json=body
        )

        assert response.status_code == 202, response.text
        stored = [(e.custom_id, e.name) for e in await _events_of(runtime, ios_app)]
        assert stored == [("ann", "ue.taylor_trigger"), ("bob", "ue.a"), ("bob", "ue.b")]


def _event(**fields: Any) -> dict[str, Any]:
    return {"name": "ue.ok", **fields}


class TestRejected:
    @pytest.mark.parametrize(
        ("event", "field"),
        [
            ({"name": "added_to_cart"}, "events.1.name"),  # no ue. prefix
            ({"name": "ue.Added"}, "events.1.name"),
            (_event(time=_iso(datetime.now(UTC) + timedelta(hours=1))), "events.1.time"),
            (_event(time=_iso(datetime.now(UTC) - timedelta(hours=25))), "events.1.time"),
            (_event(label="x" * 201), "events.1.label"),
            (_event(tags=[f"t{n}" for n in range(11)]), "events.1.tags"),
            (_event(tags=["x" * 65]), "events.1.tags"),
            (_event(attributes={f"a{n}": n for n in range(16)}), "events.1.attributes"),
            (_event(attributes={"Bad-Name": 1}), "events.1.attributes"),
            (_event(attributes={"s": "x" * 65}), "events.1.attributes"),
            (_event(attributes={"nested": {"a": 1}}), "events.1.attributes"),
            (_event(attributes={"date(when)": "yesterday"}), "events.1.attributes"),
        ],
    )
    async def test_a_bad_event_is_400_31_naming_the_field_and_nothing_is_stored(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        event: dict[str, Any],
        field: str,
    ) -> None:
        response = await api.post(
            f"/1.0/{ios_app.api_key}/events/users/u",
            headers=ios_app.headers(),
            json={"events": [_event(), event]},
        )

        assert response.status_code == 400
        body = response.json()
        assert body["code"] == 31
        assert f"{field}:" in body["message"]  # the bad event is the second one
        assert await _count(runtime, ios_app) == 0

    async def test_more_than_1000_events_across_users(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        body = [{"id": f"u{n}", "events": [_event()] * 250} for n in range(5)]

        response = await api.post(
            f"/1.0/{ios_app.api_key}/events/users", headers=ios_app.headers(), json=body
        )

        assert (response.status_code, response.json()["code"]) == (400, 31)
        assert "1000" in response.json()["message"]
        assert await _count(runtime, ios_app) == 0

    async def test_missing_name_is_400_30(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.post(
            f"/1.0/{ios_app.api_key}/events/users/u",
            headers=ios_app.headers(),
            json={"events": [{"label": "no name"}]},
        )

        assert (response.status_code, response.json()["code"]) == (400, 30)

    async def test_the_rest_key_is_required_and_must_own_the_app(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        other = await new_app(runtime, None, "ios", configure=False)
        url = f"/1.0/{ios_app.api_key}/events/users/u"
        body = {"events": [_event()]}

        missing = await api.post(url, json=body)
        foreign = await api.post(url, headers=other.headers(), json=body)

        assert (missing.status_code, missing.json()["code"]) == (401, 10)
        assert (foreign.status_code, foreign.json()["code"]) == (401, 10)
        assert await _count(runtime, ios_app) == 0
