"""Custom Audience API (spec §8), and audiences as campaign targeting."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clarion.audiences import service as audiences
from clarion.audiences.models import AudienceKind
from clarion.audiences.resolved import installations_changed, member_of_any
from clarion.db import transaction, utcnow
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from tests.conftest import ClientApp
from tests.support.clock import Clock
from tests.support.waiting import lock_waited
from tests.test_campaign_runs import T, add_installs, reached, scheduler
from tests.test_campaigns import created, error
from tests.test_sdk_api import register


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

    async def test_an_offset_past_64_bits_is_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        # The database's OFFSET is a 64-bit integer (a 500 the fuzzing run found).
        last = await api.get(url(ios_app), headers=ios_app.headers(), params={"from": 2**63 - 1})
        assert last.json() == {"custom_audiences": []}
        past = await api.get(url(ios_app), headers=ios_app.headers(), params={"from": 2**63})
        assert "from" in error(past, 400, 31)

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


class TestResolution:
    """Targeting reads members resolved to installations; these follow both sides' changes."""

    async def test_installs_that_take_a_listed_id_later_join_and_leave_with_it(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        await put(api, ios_app, "users", {"type": "custom_ids", "ids": ["later"]})
        await put(api, ios_app, "ads", {"type": "advertising_ids", "ids": ["AD-1"]})
        await put(api, ios_app, "devices", {"ids": [{"id": "phone-2"}]}, version="1.1")
        assert await estimate(api, ios_app, ["users", "ads", "devices"]) == 0

        await register(api, ios_app, "phone-1", custom_id="later", push_token="ab" * 32)
        assert await estimate(api, ios_app, ["users"]) == 1
        await register(api, ios_app, "phone-1", advertising_id="AD-1")
        assert await estimate(api, ios_app, ["ads"]) == 1
        await register(api, ios_app, "phone-2", push_token="cd" * 32)  # created, listed by id
        assert await estimate(api, ios_app, ["devices"]) == 1

        custom_id = f"/sdk/v1/{ios_app.api_key}/installations/phone-1/custom_id"
        assert (await api.delete(custom_id)).status_code == 200
        assert await estimate(api, ios_app, ["users"]) == 0
        assert (await api.put(custom_id, json={"custom_id": "later"})).status_code == 200
        assert await estimate(api, ios_app, ["users"]) == 1
        await register(api, ios_app, "phone-1", advertising_id="AD-2")
        assert await estimate(api, ios_app, ["ads", "users"]) == 1
        assert await estimate(api, ios_app, ["ads"]) == 0

    async def test_every_bit_of_a_block_is_its_own_installation(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # 200 consecutive installations span four blocks of 64, whatever the first id; the
        # members are chosen by position in the block, the edges (0, 1, 62, 63) among them.
        installs = await add_installs(runtime, ios_app, 200)
        chosen = [i for i in installs if i.id % 64 in (0, 1, 62, 63) or i.id % 7 == 0]
        await put(api, ios_app, "edges", {"ids": [{"id": i.install_id} for i in chosen]}, "1.1")
        assert await estimate(api, ios_app, ["edges"]) == len(chosen)

        # Removing members clears their bits only; the block's other members stay.
        leaving = [i for i in chosen if i.id % 64 in (0, 63)]
        changes = [{"action": "remove", "id": i.install_id} for i in leaving]
        assert (await patch(api, ios_app, "edges", {"ids": changes}, "1.1")).status_code == 202
        token = await created(
            api, ios_app, push_time="2030-06-01T10:00:00", targeting={"custom_audiences": ["edges"]}
        )
        await scheduler(runtime, Clock(T)).tick()
        assert sorted(await reached(runtime, token)) == sorted(
            i.id for i in chosen if i not in leaving
        )

    async def test_a_replace_waits_for_an_install_taking_a_listed_id(
        self, backend: str, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # Each transaction resolves what it sees: an install re-resolved before a replace's
        # members are committed, and committed after the replace resolved them, would be in
        # neither. On PostgreSQL the replace waits for the install's transaction to end.
        if backend != "postgres":
            pytest.skip("SQLite writes one transaction at a time")
        (install,) = await add_installs(runtime, ios_app, 1)
        async with transaction(runtime.sessions) as sdk:
            row = await sdk.get(Installation, install.id)
            assert row is not None
            row.custom_id = "racer"
            await sdk.flush()
            await installations_changed(sdk, app_id=ios_app.app_id, installation_ids=[row.id])

            async def replace() -> None:
                async with transaction(runtime.sessions) as session:
                    await audiences.replace_audience(
                        session,
                        app_id=ios_app.app_id,
                        name="race",
                        kind=AudienceKind.CUSTOM_IDS,
                        description=None,
                        members=[("racer", None, None)],
                        now=utcnow(),
                    )

            replacing = asyncio.create_task(replace())
            await lock_waited(
                runtime.settings.database_url, what="the replace waiting for the install"
            )
            assert not replacing.done()
        await asyncio.wait_for(replacing, 10)
        async with runtime.sessions() as session:
            statement = select(func.count()).where(
                Installation.app_id == ios_app.app_id,
                member_of_any(app_id=ios_app.app_id, names=["race"]),
            )
            assert await session.scalar(statement) == 1
