"""Campaigns API 1.1 (spec §4): the wire format, the update rules, and bad input."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clarion.campaigns.models import Campaign
from clarion.runtime import Runtime
from tests.conftest import ClientApp

EXAMPLE = {
    "name": "Test Campaign",
    "live": True,
    "push_time": "2030-01-01T10:00:00",
    "messages": [{"language": "en", "body": "Hello!"}],
}


async def create(
    api: httpx.AsyncClient, app: ClientApp, body: dict[str, Any], *, key: str | None = None
) -> httpx.Response:
    return await api.post(
        f"/1.1/{key or app.api_key}/campaigns/create", headers=app.headers(), json=body
    )


async def created(
    api: httpx.AsyncClient, app: ClientApp, body: dict[str, Any] | None = None, **changes: Any
) -> str:
    response = await create(api, app, {**(body or EXAMPLE), **changes})
    assert response.status_code == 201, response.text
    token: str = response.json()["campaign_token"]
    return token


async def get(api: httpx.AsyncClient, app: ClientApp, token: str) -> httpx.Response:
    return await api.get(f"/1.1/{app.api_key}/campaigns/{token}", headers=app.headers())


async def update(
    api: httpx.AsyncClient, app: ClientApp, token: str, body: dict[str, Any]
) -> httpx.Response:
    return await api.post(
        f"/1.1/{app.api_key}/campaigns/update/{token}", headers=app.headers(), json=body
    )


async def campaign_count(runtime: Runtime, app: ClientApp) -> int:
    async with runtime.sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Campaign).where(Campaign.app_id == app.app_id)
        )
        return count or 0


def error(response: httpx.Response, status: int, code: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    message: str = body["message"]
    return message


class TestCreateAndGet:
    async def test_the_documented_example_answers_201_with_a_32_hex_token(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await create(api, ios_app, {**EXAMPLE, "push_time": "now"})
        assert response.status_code == 201
        assert re.fullmatch(r"[0-9a-f]{32}", response.json()["campaign_token"])

    async def test_get_answers_the_create_body_plus_batchs_fields(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {
            **EXAMPLE,
            "labels": ["promo"],
            "gcm_collapse_key": "default",
            "targeting": {"segments": ["NEW", "ENGAGED"]},
            "messages": [
                {"language": "en", "title": "Hello!", "body": "Sale today"},
                {"language": "fr", "title": "Bonjour !", "body": "Soldes"},
            ],
            "deeplink": "myapp://sale",
            "custom_payload": '{"sale": 1}',
        }
        token = await created(api, ios_app, body)
        got = (await get(api, ios_app, token)).json()
        assert got["campaign_token"] == token
        assert got["from_api"] is True
        assert got["dev_only"] is False
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", got["created_date"])
        for key in ("name", "live", "push_time", "labels", "gcm_collapse_key", "deeplink"):
            assert got[key] == body[key]
        assert got["messages"] == body["messages"]
        assert got["targeting"]["segments"] == ["NEW", "ENGAGED"]
        assert got["state"] == "scheduled"

    async def test_a_draft_is_saved_unscheduled(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await created(api, ios_app, live=False)
        assert (await get(api, ios_app, token)).json()["state"] == "draft"
        async with runtime.sessions() as session:
            campaign = await session.scalar(select(Campaign).where(Campaign.token == token))
            assert campaign is not None
            assert campaign.next_run_at is None

    async def test_dev_key_campaigns_are_dev_only(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await create(api, ios_app, EXAMPLE, key=ios_app.dev_api_key)
        assert response.status_code == 201
        got = (await get(api, ios_app, response.json()["campaign_token"])).json()
        assert got["dev_only"] is True

    async def test_get_list_and_stats_need_the_live_key(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        dev = ios_app.dev_api_key
        for path in (f"campaigns/{token}", "campaigns/list", f"campaigns/stats/{token}"):
            response = await api.get(f"/1.1/{dev}/{path}", headers=ios_app.headers())
            error(response, 403, 12)

    async def test_another_apps_campaign_is_not_found(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        response = await api.get(
            f"/1.1/{android_app.api_key}/campaigns/{token}", headers=android_app.headers()
        )
        error(response, 404, 20)


class TestList:
    async def test_a_bare_array_newest_first_with_paging_and_filters(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        tokens = [await created(api, ios_app, name=f"campaign {i}") for i in range(3)]
        draft = await created(api, ios_app, name="a draft", live=False)
        url = f"/1.1/{ios_app.api_key}/campaigns/list"
        listed = (await api.get(url, headers=ios_app.headers())).json()
        assert isinstance(listed, list)
        assert [c["campaign_token"] for c in listed] == [draft, *reversed(tokens)]
        assert set(listed[0]) >= {
            "campaign_token", "from_api", "dev_only", "created_date", "name", "live", "push_time"
        }  # fmt: skip
        page = await api.get(url, params={"from": 1, "limit": 2}, headers=ios_app.headers())
        assert [c["campaign_token"] for c in page.json()] == [tokens[2], tokens[1]]
        live = await api.get(url, params={"live": "true"}, headers=ios_app.headers())
        assert [c["campaign_token"] for c in live.json()] == list(reversed(tokens))
        drafts = await api.get(url, params={"live": "false"}, headers=ios_app.headers())
        assert [c["campaign_token"] for c in drafts.json()] == [draft]
        dashboard = await api.get(url, params={"from_api": "false"}, headers=ios_app.headers())
        assert dashboard.json() == []

    async def test_limit_is_at_most_100(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.get(
            f"/1.1/{ios_app.api_key}/campaigns/list",
            params={"limit": 101},
            headers=ios_app.headers(),
        )
        error(response, 400, 31)


class TestUpdate:
    async def test_live_alone_turns_a_draft_into_a_scheduled_campaign(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app, live=False)
        response = await update(api, ios_app, token, {"live": True})
        assert response.status_code == 200, response.text
        got = (await get(api, ios_app, token)).json()
        assert (got["live"], got["state"]) == (True, "scheduled")

    async def test_live_false_takes_a_scheduled_campaign_back_to_draft(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        assert (await update(api, ios_app, token, {"live": False})).status_code == 200
        assert (await get(api, ios_app, token)).json()["state"] == "draft"

    async def test_fields_merge_and_the_name_changes(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        response = await update(api, ios_app, token, {"name": "Renamed", "deeplink": "app://x"})
        assert response.status_code == 200
        got = (await get(api, ios_app, token)).json()
        assert (got["name"], got["deeplink"], got["messages"]) == (
            "Renamed",
            "app://x",
            EXAMPLE["messages"],
        )

    async def test_a_parameter_once_set_cannot_be_removed(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(
            api, ios_app, deeplink="app://x", media={"picture": "https://cdn.example.com/p.jpg"}
        )
        message = error(await update(api, ios_app, token, {"deeplink": None}), 400, 31)
        assert "deeplink" in message
        # [] where an object goes is PHP's empty object: it does not remove the media either.
        message = error(await update(api, ios_app, token, {"media": []}), 400, 31)
        assert "media" in message
        got = (await get(api, ios_app, token)).json()
        assert (got["deeplink"], got["media"]) == (
            "app://x",
            {"picture": "https://cdn.example.com/p.jpg"},
        )

    async def test_a_recurring_campaign_stays_recurring(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app, recurrence={"repeat_unit": "DAILY"})
        error(await update(api, ios_app, token, {"recurrence": None}), 400, 31)

    async def test_a_completed_campaign_cannot_go_live_again(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await created(api, ios_app)
        async with runtime.sessions() as session, session.begin():
            campaign = await session.scalar(select(Campaign).where(Campaign.token == token))
            assert campaign is not None
            campaign.state = "completed"
        message = error(await update(api, ios_app, token, {"live": True}), 400, 31)
        assert "completed" in message

    async def test_an_invalid_merge_changes_nothing(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        response = await update(
            api, ios_app, token, {"name": "ok name", "local_push_time": "2030-01-01T09:00:00"}
        )
        error(response, 400, 31)  # push_time and local_push_time together
        assert (await get(api, ios_app, token)).json()["name"] == EXAMPLE["name"]


class TestDelete:
    async def test_a_deleted_campaign_is_gone(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        response = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/delete/{token}", headers=ios_app.headers()
        )
        assert response.status_code == 200
        error(await get(api, ios_app, token), 404, 20)
        listed = await api.get(f"/1.1/{ios_app.api_key}/campaigns/list", headers=ios_app.headers())
        assert token not in {c["campaign_token"] for c in listed.json()}


class TestBadInput:
    @pytest.mark.parametrize(
        ("change", "status", "code", "mentions"),
        [
            ({"name": "ab"}, 400, 31, "name"),
            ({"labels": ["a", "b", "c", "d"]}, 400, 31, "labels"),
            ({"local_push_time": "2030-01-01T09:00:00"}, 400, 31, "mutually exclusive"),
            ({"push_time": None}, 400, 30, "push_time"),
            ({"push_time": "tomorrow"}, 400, 31, "push_time"),
            ({"messages": []}, 400, 31, "messages"),
            ({"live": None}, 400, 30, "live"),
            ({"custom_payload": '{"com.batch": 1}'}, 400, 31, "custom_payload"),
            ({"time_to_live": 0}, 400, 31, "time_to_live"),
            ({"capping": 2}, 400, 31, "recurring"),
            ({"recurrence": {"repeat_unit": "HOURLY"}}, 400, 31, "recurrence"),
            (
                {"messages": [{"language": "en", "body": "x", "version": "a"}]},
                400,
                31,
                "two versions",
            ),
            (
                {
                    "messages": [
                        {"language": "en", "body": "x", "version": "a"},
                        {"language": "en", "body": "y", "version": "b"},
                    ],
                    "version_split": {"a": 60, "b": 30},
                },
                400,
                31,
                "100",
            ),
            ({"targeting": {"query": {"c.age": {"$foo": 3}}}}, 400, 31, "targeting.query"),
            (
                {"recurrence": {"repeat_unit": "DAILY", "end_date": "2029-12-31T10:00:00"}},
                400,
                31,
                "end_date",
            ),
            ({"messages": [{"language": "en", "body": "{{ 'x' * 9 }}"}]}, 400, 31, "template"),
            ({"targeting": {"custom_audiences": ["nobody"]}}, 400, 31, "nobody"),
        ],
    )
    async def test_is_refused_and_stores_nothing(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        change: dict[str, Any],
        status: int,
        code: int,
        mentions: str,
    ) -> None:
        body = {key: value for key, value in {**EXAMPLE, **change}.items() if value is not None}
        message = error(await create(api, ios_app, body), status, code)
        assert mentions in message
        assert await campaign_count(runtime, ios_app) == 0

    async def test_unknown_token_is_404_code_20_everywhere(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        missing = "0" * 32
        base = f"/1.1/{ios_app.api_key}/campaigns"
        headers = ios_app.headers()
        error(await api.get(f"{base}/{missing}", headers=headers), 404, 20)
        error(await api.get(f"{base}/stats/{missing}", headers=headers), 404, 20)
        error(await update(api, ios_app, missing, {"live": True}), 404, 20)
        error(await api.post(f"{base}/delete/{missing}", headers=headers), 404, 20)

    async def test_an_update_body_that_is_not_an_object(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        response = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/update/{token}",
            headers=ios_app.headers(),
            json=["live", True],
        )
        error(response, 400, 32)

    async def test_malformed_json(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/create",
            headers={**ios_app.headers(), "Content-Type": "application/json"},
            content=b"{nope",
        )
        error(response, 400, 32)

    async def test_needs_the_rest_key(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.post(f"/1.1/{ios_app.api_key}/campaigns/create", json=EXAMPLE)
        error(response, 401, 10)
