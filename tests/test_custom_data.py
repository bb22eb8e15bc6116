"""Custom Data API 1.0 (spec §7): attributes and tag collections per custom user id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clarion.custom_data.models import ProfileAttribute, ProfileTag
from clarion.runtime import Runtime
from tests.conftest import ClientApp, new_app


async def _profile(runtime: Runtime, app: ClientApp, custom_id: str) -> dict[str, Any]:
    """What is stored for one user: {name: (kind, text, number)} and {collection: {tags}}."""
    async with runtime.sessions() as session:
        attributes = await session.scalars(
            select(ProfileAttribute).where(
                ProfileAttribute.app_id == app.app_id, ProfileAttribute.custom_id == custom_id
            )
        )
        tags = await session.scalars(
            select(ProfileTag).where(
                ProfileTag.app_id == app.app_id, ProfileTag.custom_id == custom_id
            )
        )
        collections: dict[str, set[str]] = {}
        for tag in tags:
            collections.setdefault(tag.collection, set()).add(tag.tag)
        return {
            "attributes": {a.name: (a.kind, a.text_value, a.number_value) for a in attributes},
            "tags": collections,
        }


async def _rows(runtime: Runtime, app: ClientApp) -> int:
    async with runtime.sessions() as session:
        total = 0
        for model in (ProfileAttribute, ProfileTag):
            total += (
                await session.scalar(
                    select(func.count()).select_from(model).where(model.app_id == app.app_id)
                )
                or 0
            )
        return total


async def _set(
    api: httpx.AsyncClient, app: ClientApp, custom_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await api.post(
        f"/1.0/{app.api_key}/data/users/{custom_id}", headers=app.headers(), json=body
    )


class TestSet:
    async def test_the_documented_example_is_stored_typed(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        response = await _set(
            api,
            ios_app,
            "rock",
            {
                "overwrite": False,
                "values": {
                    "u.nickname": "The Rock",
                    "u.force": 42,
                    "u.ratio": 0.5,
                    "u.is_subscribed": True,
                    "ut.hobbies": ["Lifting", "Wrestling", "Acting"],
                    "date(u.last_subscription)": "2016-01-10T10:00:00.000",
                    "date(u.last_purchase)": 1472656161,
                    "url(u.profile)": "https://example.com/rock?x=1",
                },
            },
        )

        assert response.status_code == 200, response.text
        uuid.UUID(response.json()["token"])
        stored = await _profile(runtime, ios_app, "rock")
        assert stored["attributes"] == {
            "nickname": ("string", "The Rock", None),
            "force": ("integer", None, 42.0),
            "ratio": ("float", None, 0.5),
            "is_subscribed": ("boolean", None, 1.0),
            "last_subscription": (
                "date",
                "2016-01-10T10:00:00+00:00",
                datetime(2016, 1, 10, 10, tzinfo=UTC).timestamp(),
            ),
            "last_purchase": (
                "date",
                datetime.fromtimestamp(1472656161, UTC).isoformat(),
                1472656161.0,
            ),
            "profile": ("url", "https://example.com/rock?x=1", None),
        }
        assert stored["tags"] == {"hobbies": {"Lifting", "Wrestling", "Acting"}}

    async def test_merge_null_deletes_add_and_remove_then_overwrite(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        first = {"u.a": "1", "u.b": 2, "ut.places": ["Paris", "Berlin"], "ut.pets": ["cat"]}
        assert (await _set(api, ios_app, "u1", {"values": first})).status_code == 200

        merged = {
            "u.a": None,
            "u.c": True,
            "ut.places": {"$add": ["Rome"], "$remove": ["Berlin"]},
            "ut.pets": None,
        }
        assert (await _set(api, ios_app, "u1", {"values": merged})).status_code == 200
        stored = await _profile(runtime, ios_app, "u1")
        assert set(stored["attributes"]) == {"b", "c"}
        assert stored["tags"] == {"places": {"Paris", "Rome"}}

        replaced = {"overwrite": True, "values": {"u.d": "only"}}
        assert (await _set(api, ios_app, "u1", replaced)).status_code == 200
        stored = await _profile(runtime, ios_app, "u1")
        assert stored == {"attributes": {"d": ("string", "only", None)}, "tags": {}}

    async def test_bulk_update_and_delete(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        url = f"/1.0/{ios_app.api_key}/data/users"
        body = [
            {"id": f"user-{n}", "update": {"values": {"u.rank": n, "ut.group": [f"g{n % 3}"]}}}
            for n in range(2_000)
        ]

        response = await api.post(url, headers=ios_app.headers(), json=body)

        assert response.status_code == 200, response.text
        assert (await _profile(runtime, ios_app, "user-1999"))["attributes"]["rank"][2] == 1999
        assert await _rows(runtime, ios_app) == 4_000
        trailing = await api.post(
            url + "/",
            headers=ios_app.headers(),
            json=[{"id": "x", "update": {"values": {"u.k": 1}}}],
        )
        assert trailing.status_code == 200

        deleted = await api.request(
            "DELETE", url, headers=ios_app.headers(), json=[f"user-{n}" for n in range(1_000)]
        )
        assert deleted.status_code == 200
        single = await api.delete(f"{url}/x", headers=ios_app.headers())
        assert single.status_code == 200
        assert await _rows(runtime, ios_app) == 2_000
        assert await _profile(runtime, ios_app, "user-0") == {"attributes": {}, "tags": {}}

    async def test_a_full_bulk_call_of_10000_users_fits_in_its_body_limit(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # ~2 MB: over the 1 MiB that other routes allow, under the bulk routes' 32 MiB.
        body = [
            {"id": f"member-{n:05d}", "update": {"values": {"u.city": "x" * 60, "u.rank": n}}}
            for n in range(10_000)
        ]

        response = await api.post(
            f"/1.0/{ios_app.api_key}/data/users", headers=ios_app.headers(), json=body
        )

        assert response.status_code == 200, response.text
        assert await _rows(runtime, ios_app) == 20_000

    async def test_apps_do_not_share_profiles(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        other = await new_app(runtime, None, "android", configure=False)
        await _set(api, ios_app, "same-user", {"values": {"u.x": "ios"}})
        await _set(api, other, "same-user", {"values": {"u.x": "android"}})

        assert (await _profile(runtime, ios_app, "same-user"))["attributes"]["x"][1] == "ios"
        assert (await _profile(runtime, other, "same-user"))["attributes"]["x"][1] == "android"


class TestRejected:
    @pytest.mark.parametrize(
        ("values", "named"),
        [
            ({"nickname": "x"}, "nickname"),  # no u. prefix
            ({"u.Nick": "x"}, "u.Nick"),
            ({"u." + "n" * 31: 1}, "u." + "n" * 31),
            ({"u.s": "x" * 65}, "u.s"),
            ({"u.obj": {"a": 1}}, "u.obj"),
            ({"u.list": ["a"]}, "u.list"),
            ({"ut.empty": []}, "ut.empty"),
            ({"ut.many": [f"t{n}" for n in range(26)]}, "ut.many"),
            ({"ut.long": ["x" * 65]}, "ut.long"),
            ({"ut.bad": {"$put": ["a"]}}, "ut.bad"),
            ({"date(u.when)": "last tuesday"}, "date(u.when)"),
            ({"url(u.site)": "not a url"}, "url(u.site)"),
            ({"u.when": "soon", "date(u.when)": "2026-11-23T10:00:00"}, "'when'"),
        ],
    )
    async def test_bad_values_are_400_31_naming_the_key_and_nothing_is_stored(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        values: dict[str, Any],
        named: str,
    ) -> None:
        response = await _set(api, ios_app, "u", {"values": {"u.fine": 1, **values}})

        assert response.status_code == 400
        assert response.json()["code"] == 31
        assert named in response.json()["message"]
        assert await _rows(runtime, ios_app) == 0

    async def test_empty_values_missing_values_and_too_many_users(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        empty = await _set(api, ios_app, "u", {"values": {}})
        missing = await _set(api, ios_app, "u", {"overwrite": True})
        too_many = await api.post(
            f"/1.0/{ios_app.api_key}/data/users",
            headers=ios_app.headers(),
            json=[{"id": f"u{n}", "update": {"values": {"u.a": 1}}} for n in range(10_001)],
        )
        twice = await api.post(
            f"/1.0/{ios_app.api_key}/data/users",
            headers=ios_app.headers(),
            json=[{"id": "dup", "update": {"values": {"u.a": n}}} for n in range(2)],
        )

        assert (empty.status_code, empty.json()["code"]) == (400, 31)
        assert (missing.status_code, missing.json()["code"]) == (400, 30)
        assert (too_many.status_code, too_many.json()["code"]) == (400, 31)
        assert (twice.status_code, twice.json()["code"]) == (400, 31)
        assert await _rows(runtime, ios_app) == 0

    async def test_the_rest_key_must_own_the_app(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        other = await new_app(runtime, None, "ios", configure=False)
        url = f"/1.0/{ios_app.api_key}/data/users/u"

        missing = await api.post(url, json={"values": {"u.a": 1}})
        foreign = await api.post(url, headers=other.headers(), json={"values": {"u.a": 1}})

        assert (missing.status_code, missing.json()["code"]) == (401, 10)
        assert (foreign.status_code, foreign.json()["code"]) == (401, 10)
        assert await _rows(runtime, ios_app) == 0
