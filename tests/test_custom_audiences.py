"""Custom Audience API (spec §8), and audiences as campaign targeting."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.test_campaign_runs import Clock, T, add_installs, reached, scheduler
from tests.test_campaigns import created, error


def url(app: ClientApp, name: str = "", version: str = "1.0") -> str:
    base = f"/1.{version[-1]}/{app.api_key}/custom-audience"
    return f"{base}/{name}" if name else base


async def put(
    api: httpx.AsyncClient, app: ClientApp, name: str, body: dict[str, Any], version: str = "1.0"
) -> httpx.Response:
    return await api.put(url(app, name, version), headers=app.headers(), json=body)


async def patch(
    api: httpx.AsyncClient, app: ClientApp, name: str, body: dict[str, Any], version: str = "1.0"
) -> httpx.Response:
    return await api.patch(url(app, name, version), headers=app.headers(), json=body)


async def view(api: httpx.AsyncClient, app: ClientApp, name: str, **params: str) -> dict[str, Any]:
    response = await api.get(url(app, name), headers=app.headers(), params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def estimate(api: httpx.AsyncClient, app: ClientApp, audiences: list[str]) -> int:
    response = await api.post(
        f"/1.1/{app.api_key}/campaigns/estimate",
        headers=app.headers(),
        json={"targeting": {"custom_audiences": audiences}},
    )
    assert response.status_code == 200, response.text
    matched: int = response.json()["matched"]
    return matched


class TestReplace:
    async def test_put_creates_and_answers_an_indexing_token(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await put(
            api,
            ios_app,
            "vip",
            {"type": "custom_ids", "description": "Best buyers", "ids": ["a", "b", "b", "c"]},
        )
        assert response.status_code == 202, response.text
        token = response.json()["indexing_token"]
        got = await view(api, ios_app, "vip", indexing_token=token)
        assert (got["name"], got["type"], got["description"], got["nb_ids"]) == (
            "vip",
            "custom_ids",
            "Best buyers",
            3,
        )
        assert got["indexing_state"] == "APPLIED"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", got["created"])

    async def test_a_replace_swaps_every_member_and_supersedes_earlier_tokens(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await add_installs(runtime, ios_app, 1, custom_id="old-1")
        await add_installs(runtime, ios_app, 1, custom_id="new-1")
        await add_installs(runtime, ios_app, 1, custom_id="new-2")
        first = (await put(api, ios_app, "swap", {"type": "custom_ids", "ids": ["old-1"]})).json()
        assert await estimate(api, ios_app, ["swap"]) == 1
        await put(api, ios_app, "swap", {"type": "custom_ids", "ids": ["new-1", "new-2"]})
        assert await estimate(api, ios_app, ["swap"]) == 2
        got = await view(api, ios_app, "swap", indexing_token=first["indexing_token"])
        assert (got["nb_ids"], got["indexing_state"]) == (2, "REPLACED")

    async def test_version_1_1_takes_install_ids_with_attributes_and_tags(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        installs = await add_installs(runtime, ios_app, 3)
        body = {
            "ids": [
                {"id": installs[0].install_id, "attributes": {"score": 3}, "tags": ["x"]},
                {"id": installs[1].install_id},
            ]
        }
        response = await put(api, ios_app, "by-install", body, version="1.1")
        assert response.status_code == 202, response.text
        assert (await view(api, ios_app, "by-install"))["type"] == "install_ids"
        assert await estimate(api, ios_app, ["by-install"]) == 2

    async def test_advertising_ids_reach_installs_that_report_them(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await add_installs(runtime, ios_app, 1, advertising_id="AAAA-1111")
        await add_installs(runtime, ios_app, 1, advertising_id="BBBB-2222")
        await put(api, ios_app, "ads", {"type": "advertising_ids", "ids": ["AAAA-1111", "Z"]})
        assert await estimate(api, ios_app, ["ads"]) == 1


class TestUpdate:
    async def test_patch_adds_and_removes(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        for custom_id in ("u1", "u2", "u3"):
            await add_installs(runtime, ios_app, 1, custom_id=custom_id)
        await put(api, ios_app, "grow", {"type": "custom_ids", "ids": ["u1", "u2"]})
        response = await patch(
            api,
            ios_app,
            "grow",
            {
                "type": "custom_ids",
                "ids": [{"action": "add", "id": "u3"}, {"action": "remove", "id": "u1"}],
            },
        )
        assert response.status_code == 202, response.text
        assert (await view(api, ios_app, "grow"))["nb_ids"] == 2
        assert await estimate(api, ios_app, ["grow"]) == 2

    async def test_patch_on_a_missing_audience_is_404(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {"type": "custom_ids", "ids": [{"action": "add", "id": "x"}]}
        error(await patch(api, ios_app, "nothing-here", body), 404, 20)

    async def test_patch_of_another_id_kind_is_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        await put(api, ios_app, "kind", {"type": "custom_ids", "ids": ["x"]})
        body = {"type": "advertising_ids", "ids": [{"action": "add", "id": "y"}]}
        assert "custom_ids" in error(await patch(api, ios_app, "kind", body), 400, 31)
        assert (await view(api, ios_app, "kind"))["nb_ids"] == 1


class TestListAndDelete:
    async def test_list_newest_first_with_paging(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        for name in ("first", "second", "third"):
            await put(api, ios_app, name, {"type": "custom_ids", "ids": [name]})
        response = await api.get(url(ios_app), headers=ios_app.headers())
        listed = response.json()["custom_audiences"]
        assert [a["name"] for a in listed] == ["third", "second", "first"]
        assert set(listed[0]) >= {"name", "type", "description", "nb_ids", "created", "updated"}
        page = await api.get(
            url(ios_app), headers=ios_app.headers(), params={"from": 1, "limit": 1}
        )
        assert [a["name"] for a in page.json()["custom_audiences"]] == ["second"]

    async def test_delete(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        await put(api, ios_app, "gone", {"type": "custom_ids", "ids": ["x"]})
        response = await api.delete(url(ios_app, "gone"), headers=ios_app.headers())
        assert response.status_code == 200
        error(await api.get(url(ios_app, "gone"), headers=ios_app.headers()), 404, 20)
        error(await api.delete(url(ios_app, "gone"), headers=ios_app.headers()), 404, 20)

    async def test_audiences_are_per_app(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
    ) -> None:
        await put(api, ios_app, "mine", {"type": "custom_ids", "ids": ["x"]})
        error(await api.get(url(android_app, "mine"), headers=android_app.headers()), 404, 20)


class TestBadInput:
    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"type": "emails", "ids": ["x"]}, 31),
            ({"ids": ["x"]}, 30),
            ({"type": "custom_ids", "ids": [""]}, 31),
            ({"type": "custom_ids", "ids": [f"id-{n}" for n in range(10_001)]}, 31),
        ],
    )
    async def test_is_refused_and_creates_nothing(
        self, api: httpx.AsyncClient, ios_app: ClientApp, body: dict[str, Any], code: int
    ) -> None:
        response = await put(api, ios_app, "bad", body)
        error(response, 400, code)
        error(await api.get(url(ios_app, "bad"), headers=ios_app.headers()), 404, 20)

    async def test_ten_thousand_ids_are_accepted(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        ids = [f"user-with-a-longish-identifier-{n:08d}" for n in range(10_000)]
        response = await put(api, ios_app, "big", {"type": "custom_ids", "ids": ids})
        assert response.status_code == 202, response.text
        assert (await view(api, ios_app, "big"))["nb_ids"] == 10_000


class TestTargeting:
    async def test_a_campaign_reaches_the_audience_members(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        members = [
            (await add_installs(runtime, ios_app, 1, custom_id=f"m{n}"))[0] for n in range(3)
        ]
        await add_installs(runtime, ios_app, 2, custom_id="outsider")
        await put(api, ios_app, "members", {"type": "custom_ids", "ids": ["m0", "m1", "m2"]})
        token = await created(
            api,
            ios_app,
            push_time="2030-06-01T10:00:00",
            targeting={"custom_audiences": ["members"]},
        )
        await scheduler(runtime, Clock(T)).tick()
        assert set(await reached(runtime, token)) == {install.id for install in members}
