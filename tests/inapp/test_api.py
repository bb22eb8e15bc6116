"""In-App Campaigns API 1.1 (spec §6, docs/inapp.md): the wire format, Batch's update rules, the
window installations are served by, bad input, keys, and the statistics SDK events make."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from clarion.apps.models import App
from clarion.apps.service import live_access
from clarion.db import transaction
from clarion.inapp import service
from clarion.inapp.models import InAppCampaign, InAppRevision
from clarion.inapp.schemas import MAX_LIVE_CRITERIA
from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.test_campaigns import error

EXAMPLE: dict[str, Any] = {
    "name": "Welcome",
    "live": True,
    "trigger": {
        "when": "NEXT_SESSION",
        "capping": 2,
        "grace_period": {"every": 1, "unit": "HOURS"},
    },
    "landing": {
        "theme": "default",
        "contents": [
            {
                "language": "en",
                "header": "Welcome",
                "title": "Hello!",
                "body": "How is it going?",
                "actions": [{"label": "Continue", "action": "continue"}],
            }
        ],
    },
}

AB = {
    **EXAMPLE,
    "landing": {
        "contents": [
            {
                "version": "a",
                "title": "A",
                "actions": [
                    {"label": "Buy", "action": "deeplink", "args": {"l": "app://buy"}},
                    {"label": "Later", "action": "DISMISS"},
                ],
            },
            {"version": "b", "title": "B", "actions": [{"label": "Buy", "action": "continue"}]},
        ]
    },
    "version_split": {"a": 30, "b": 70},
}


def url(app: ClientApp, path: str, *, key: str | None = None) -> str:
    return f"/1.1/{key or app.api_key}/in-app-campaigns/{path}"


async def create(
    api: httpx.AsyncClient, app: ClientApp, body: dict[str, Any], *, key: str | None = None
) -> httpx.Response:
    return await api.post(url(app, "create", key=key), headers=app.headers(), json=body)


async def created(
    api: httpx.AsyncClient, app: ClientApp, body: dict[str, Any] | None = None, **changes: Any
) -> str:
    response = await create(api, app, {**(body or EXAMPLE), **changes})
    assert response.status_code == 201, response.text
    token: str = response.json()["campaign_token"]
    return token


async def get(api: httpx.AsyncClient, app: ClientApp, token: str) -> httpx.Response:
    return await api.get(url(app, token), headers=app.headers())


async def update(
    api: httpx.AsyncClient, app: ClientApp, token: str, body: Any, *, key: str | None = None
) -> httpx.Response:
    return await api.post(url(app, f"update/{token}", key=key), headers=app.headers(), json=body)


async def row(runtime: Runtime, token: str) -> InAppCampaign:
    async with runtime.sessions() as session:
        campaign = await session.scalar(select(InAppCampaign).where(InAppCampaign.token == token))
        assert campaign is not None
        return campaign


async def revision(runtime: Runtime, app: ClientApp) -> int:
    async with runtime.sessions() as session:
        found = await session.scalar(
            select(InAppRevision.revision).where(InAppRevision.app_id == app.app_id)
        )
        return found or 0


class TestCreateAndGet:
    async def test_get_answers_the_create_body_plus_batchs_fields(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {
            **EXAMPLE,
            "labels": ["onboarding"],
            "targeting": {"segments": ["NEW"], "languages": ["en"]},
            "deeplink": "myapp://home",
            "custom_payload": '{"k": 1}',
        }
        response = await create(api, ios_app, body)
        assert response.status_code == 201, response.text
        token = response.json()["campaign_token"]
        assert re.fullmatch(r"[0-9a-f]{32}", token)
        got = (await get(api, ios_app, token)).json()
        assert got["campaign_token"] == token
        assert (got["from_api"], got["dev_only"]) == (True, False)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", got["created_date"])
        for key in ("name", "live", "labels", "deeplink", "custom_payload", "trigger", "landing"):
            assert got[key] == body[key], key
        assert got["targeting"]["segments"] == ["NEW"]

    @pytest.mark.parametrize("when", ["NEXT_SESSION", "next_session", "Now"])
    async def test_both_cases_of_when_are_accepted_and_stored_upper_case(
        self, when: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app, trigger={"when": when})
        got = (await get(api, ios_app, token)).json()
        assert got["trigger"] == {"when": when.upper()}

    @pytest.mark.parametrize("event", ["e.purchase", "ue.bought"])
    async def test_an_event_trigger_with_its_label(
        self, event: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        trigger = {"when": "event", "event": event, "label": "shoes", "capping": 1}
        token = await created(api, ios_app, trigger=trigger)
        got = (await get(api, ios_app, token)).json()
        assert got["trigger"] == {**trigger, "when": "EVENT"}

    async def test_the_window_is_utc_and_widened_by_14_hours_for_local_dates(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        utc = await created(
            api, ios_app, start_date="2030-01-01T10:00:00", end_date="2030-01-02T10:00:00"
        )
        local = await created(
            api,
            ios_app,
            local_start_date="2030-01-01T10:00:00",
            local_end_date="2030-01-02T10:00:00",
        )
        now = await created(api, ios_app, start_date="now")
        none = await created(api, ios_app)
        window = [
            (c.window_start, c.window_end) for c in [await row(runtime, t) for t in (utc, local)]
        ]
        assert window == [
            (datetime(2030, 1, 1, 10, tzinfo=UTC), datetime(2030, 1, 2, 10, tzinfo=UTC)),
            (datetime(2029, 12, 31, 20, tzinfo=UTC), datetime(2030, 1, 3, 0, tzinfo=UTC)),
        ]
        started = await row(runtime, now)
        assert (started.window_start, started.window_end) == (started.created_at, None)
        unbounded = await row(runtime, none)
        assert (unbounded.window_start, unbounded.window_end) == (None, None)

    async def test_null_optional_fields_and_trailing_slashes_as_batchs_clients_send(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        nulls = dict.fromkeys(
            ["labels", "start_date", "end_date", "targeting", "deeplink", "custom_payload"]
        )
        body = {**EXAMPLE, **nulls, "trigger": {"when": "NOW", "capping": None, "label": None}}
        response = await api.post(url(ios_app, "create/"), headers=ios_app.headers(), json=body)
        assert response.status_code == 201, response.text
        token = response.json()["campaign_token"]
        got = (await api.get(url(ios_app, f"{token}/"), headers=ios_app.headers())).json()
        assert got["trigger"] == {"when": "NOW"}
        assert not set(nulls) & set(got)
        listed = await api.get(url(ios_app, "list/"), headers=ios_app.headers())
        assert [item["campaign_token"] for item in listed.json()] == [token]

    async def test_every_change_bumps_the_apps_revision(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        assert await revision(runtime, ios_app) == 0
        token = await created(api, ios_app)
        assert await revision(runtime, ios_app) == 1
        assert (await update(api, ios_app, token, {"live": False})).status_code == 200
        assert await revision(runtime, ios_app) == 2
        deleted = await api.post(url(ios_app, f"delete/{token}"), headers=ios_app.headers())
        assert deleted.status_code == 200
        assert await revision(runtime, ios_app) == 3
        # A refused change changes nothing.
        assert (await update(api, ios_app, token, {"live": True})).status_code == 404
        assert await revision(runtime, ios_app) == 3


class TestList:
    async def test_newest_first_paged_and_filtered(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        live = await created(api, ios_app, name="first", start_date="2030-01-01T10:00:00")
        draft = await created(api, ios_app, name="second", live=False)
        async with transaction(runtime.sessions) as session:
            app = await session.get_one(App, ios_app.app_id)
            body = service.validate_body({**EXAMPLE, "name": "dashboard"})
            later = datetime.now(UTC) + timedelta(minutes=1)
            dashboard = await service.create_campaign(
                session, access=live_access(app), body=body, now=later, from_api=False
            )
            dashboard_token = dashboard.token

        async def tokens(query: str) -> list[str]:
            response = await api.get(url(ios_app, f"list{query}"), headers=ios_app.headers())
            assert response.status_code == 200, response.text
            return [item["campaign_token"] for item in response.json()]

        assert await tokens("") == [dashboard_token, draft, live]
        assert await tokens("?from=1&limit=1") == [draft]
        assert await tokens("?live=true") == [dashboard_token, live]
        assert await tokens("?live=false") == [draft]
        assert await tokens("?from_api=true") == [draft, live]
        assert await tokens("?from_api=false") == [dashboard_token]
        first = (await api.get(url(ios_app, "list"), headers=ios_app.headers())).json()[-1]
        assert first == {
            "campaign_token": live,
            "from_api": True,
            "dev_only": False,
            "created_date": first["created_date"],
            "name": "first",
            "live": True,
            "start_date": "2030-01-01T10:00:00",
            "local_start_date": None,
            "end_date": None,
            "local_end_date": None,
        }

    @pytest.mark.parametrize("query", ["limit=0", "limit=101", "from=-1", "live=maybe"])
    async def test_bad_paging_is_a_400(
        self, query: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await api.get(url(ios_app, f"list?{query}"), headers=ios_app.headers())
        assert query.split("=")[0] in error(response, 400, 31)


class TestUpdateAndDelete:
    async def test_fields_merge_into_the_stored_campaign(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await created(api, ios_app)
        response = await update(api, ios_app, token, {"name": "Renamed", "live": False})
        assert response.status_code == 200, response.text
        assert response.json() == {"campaign_token": token}
        got = (await get(api, ios_app, token)).json()
        assert (got["name"], got["live"]) == ("Renamed", False)
        assert got["landing"] == EXAMPLE["landing"]
        assert (await row(runtime, token)).live is False
        # A new field; then the window follows the dates.
        dated = await update(api, ios_app, token, {"end_date": "2031-01-01T00:00:00"})
        assert dated.status_code == 200, dated.text
        assert (await row(runtime, token)).window_end == datetime(2031, 1, 1, tzinfo=UTC)

    @pytest.mark.parametrize("field", ["deeplink", "labels", "end_date", "targeting"])
    async def test_a_field_once_set_cannot_be_removed(
        self, field: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        values: dict[str, Any] = {
            "deeplink": "myapp://x",
            "labels": ["a"],
            "end_date": "2031-01-01T00:00:00",
            "targeting": {"segments": ["NEW"]},
        }
        token = await created(api, ios_app, **{field: values[field]})
        before = (await get(api, ios_app, token)).json()
        refused = await update(api, ios_app, token, {field: None})
        assert f"{field}: a parameter once set cannot be removed" in error(refused, 400, 31)
        assert (await get(api, ios_app, token)).json() == before

    async def test_a_required_field_stays_required(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        assert "trigger" in error(await update(api, ios_app, token, {"trigger": None}), 400, 31)
        refused = await update(api, ios_app, token, {"trigger": {"when": "EVENT"}})
        assert "trigger.event is required" in error(refused, 400, 30)

    async def test_the_dashboard_replaces_the_whole_campaign(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await created(api, ios_app, deeplink="myapp://x")
        async with transaction(runtime.sessions) as session:
            app = await session.get_one(App, ios_app.app_id)
            await service.update_campaign(
                session,
                access=live_access(app),
                token=token,
                changes={**EXAMPLE, "name": "Edited"},
                now=datetime.now(UTC),
                replace=True,
            )
        got = (await get(api, ios_app, token)).json()
        assert got["name"] == "Edited"
        assert "deeplink" not in got

    async def test_a_local_date_can_become_a_utc_one_and_back(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app, local_start_date="2026-12-24T09:00:00")
        changed = await update(api, ios_app, token, {"start_date": "2026-12-24T08:00:00"})
        assert changed.status_code == 200, changed.text
        got = (await get(api, ios_app, token)).json()
        assert (got["start_date"], got.get("local_start_date")) == ("2026-12-24T08:00:00", None)
        back = await update(api, ios_app, token, {"local_start_date": "2026-12-25T09:00:00"})
        assert back.status_code == 200, back.text
        got = (await get(api, ios_app, token)).json()
        assert (got.get("start_date"), got["local_start_date"]) == (None, "2026-12-25T09:00:00")

    async def test_ab_testing_ends_with_contents_without_versions(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app, AB)
        # New contents alone still name no version: version_split then has nothing to split.
        alone = await update(api, ios_app, token, {"landing": {"contents": [{"title": "One"}]}})
        assert "version_split" in error(alone, 400, 31)
        ended = await update(
            api,
            ios_app,
            token,
            {"landing": {"contents": [{"title": "One"}]}, "version_split": None},
        )
        assert ended.status_code == 200, ended.text
        assert "version_split" not in (await get(api, ios_app, token)).json()

    async def test_a_live_campaign_past_the_apps_criteria_budget_is_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        # One fetch statement evaluates every distinct criterion of the app's live campaigns.
        def fifty(n: int) -> dict[str, Any]:
            return {"query": {"$or": [{f"c.a{i}": f"v{n}"} for i in range(50)]}}

        for n in range(MAX_LIVE_CRITERIA // 50):
            assert (
                await create(api, ios_app, {**EXAMPLE, "targeting": fifty(n)})
            ).status_code == 201
        refused = await create(api, ios_app, {**EXAMPLE, "targeting": fifty(999)})
        assert "targeting: with this campaign" in error(refused, 400, 31)
        # A draft is not evaluated, and criteria already tested cost nothing more.
        draft = await create(api, ios_app, {**EXAMPLE, "live": False, "targeting": fifty(999)})
        assert draft.status_code == 201
        shared = await create(api, ios_app, {**EXAMPLE, "targeting": fifty(0)})
        assert shared.status_code == 201

    async def test_a_deleted_campaign_is_gone(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await created(api, ios_app)
        deleted = await api.post(url(ios_app, f"delete/{token}"), headers=ios_app.headers())
        assert (deleted.status_code, deleted.json()) == (200, {"campaign_token": token})
        assert (await row(runtime, token)).deleted_at is not None
        error(await get(api, ios_app, token), 404, 20)
        listed = await api.get(url(ios_app, "list"), headers=ios_app.headers())
        assert listed.json() == []
        error(await update(api, ios_app, token, {"name": "Back"}), 404, 20)
        again = await api.post(url(ios_app, f"delete/{token}"), headers=ios_app.headers())
        error(again, 404, 20)
        # Its statistics stay readable (docs/inapp.md).
        stats = await api.get(url(ios_app, f"stats/{token}"), headers=ios_app.headers())
        assert (stats.status_code, stats.json()["campaign_token"]) == (200, token)

    async def test_another_apps_token_is_not_found(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        headers = android_app.headers()
        for response in (
            await get(api, android_app, token),
            await update(api, android_app, token, {"name": "Mine now"}),
            await api.post(url(android_app, f"delete/{token}"), headers=headers),
            await api.get(url(android_app, f"stats/{token}"), headers=headers),
        ):
            assert "no in-app campaign" in error(response, 404, 20)
        assert (await get(api, ios_app, token)).json()["name"] == "Welcome"


def _landing(**changes: Any) -> dict[str, Any]:
    content = {**EXAMPLE["landing"]["contents"][0], **changes}
    return {"contents": [content]}


# (what the body changes, the error's code, what the message names)
BAD: list[tuple[dict[str, Any], int, str]] = [
    ({"name": "ab"}, 31, "name: String should have at least 3"),
    ({"name": "x" * 257}, 31, "name: String should have at most 256"),
    ({"live": "sure"}, 31, "live"),
    ({"labels": ["a", "b", "c", "d"]}, 31, "labels"),
    ({"start_date": "tomorrow"}, 31, "start_date"),
    ({"local_start_date": "2030-01-01 10:00"}, 31, "local_start_date"),
    (
        {"start_date": "2030-01-01T10:00:00", "local_start_date": "2030-01-01T10:00:00"},
        31,
        "start_date and local_start_date are mutually exclusive",
    ),
    (
        {"end_date": "2030-01-01T10:00:00", "local_end_date": "2030-01-01T10:00:00"},
        31,
        "end_date and local_end_date",
    ),
    (
        {"start_date": "2030-01-02T10:00:00", "end_date": "2030-01-01T10:00:00"},
        31,
        "the end date is not after the start date",
    ),
    ({"trigger": {"when": "SOMETIMES"}}, 31, "trigger.when"),
    ({"trigger": {"when": "NOW", "capping": 0}}, 31, "trigger.capping"),
    ({"trigger": {"when": "NOW", "grace_period": {"every": 0}}}, 31, "trigger.grace_period.every"),
    ({"trigger": {"when": "NOW", "grace_period": {"every": 1, "unit": "WEEKS"}}}, 31, "unit"),
    ({"trigger": {"when": "EVENT"}}, 30, "trigger.event is required"),
    ({"trigger": {"when": "EVENT", "event": "purchase"}}, 31, "trigger.event"),
    ({"trigger": {"when": "NOW", "event": "e.purchase"}}, 31, "event and label"),
    ({"targeting": {"segments": ["SLEEPY"]}}, 31, "targeting.segments"),
    ({"targeting": {"custom_audiences": ["nobody"]}}, 31, "targeting.custom_audiences"),
    ({"landing": {**EXAMPLE["landing"], "theme": "dark"}}, 31, "landing.theme"),
    ({"landing": {**EXAMPLE["landing"], "theme": "no spaces"}}, 31, "landing.theme"),
    ({"landing": {**EXAMPLE["landing"], "image": "http://x/a.png"}}, 31, "landing.image"),
    ({"landing": {"contents": []}}, 31, "landing.contents"),
    ({"landing": _landing(language="english")}, 31, "landing.contents.0.language"),
    ({"landing": _landing(header=None, title=None, body=None)}, 31, "contents.0"),
    (
        {"landing": _landing(actions=[{"label": "Go", "action": "deeplink"}])},
        31,
        "landing.contents.0.actions.0: a deeplink action needs args.l",
    ),
    (
        {"landing": _landing(actions=[{"label": "Go", "action": "explode"}])},
        31,
        "landing.contents.0.actions.0.action",
    ),
    (
        {"landing": _landing(actions=[{"label": "Go", "action": "continue"}] * 5)},
        31,
        "landing.contents.0.actions",
    ),
    ({"deeplink": "x" * 256}, 31, "deeplink"),
    ({"custom_payload": "[1]"}, 31, "custom_payload"),
    ({**AB, "version_split": {"a": 30, "b": 60}}, 31, "version_split: the shares must add up"),
    ({**AB, "version_split": {"a": 100}}, 31, "version_split must name exactly"),
    ({"start_date": "2026-1-5T0:0:0"}, 31, "start_date"),
    ({"local_start_date": "0001-01-01T00:00:00"}, 31, "local_start_date"),
    ({"local_end_date": "9999-12-31T23:59:59"}, 31, "local_end_date"),
    (
        {"start_date": "2026-12-09T00:00:00", "end_date": "2026-12-08T00:00:00"},
        31,
        "end_date: the end date is not after the start date",
    ),
    (
        {"landing": {"contents": [{"version": "a", "title": "A"}, {"title": "B"}]}},
        31,
        "every one of the landing contents names its version",
    ),
]


class TestBadInput:
    @pytest.mark.parametrize(("changes", "code", "named"), BAD)
    async def test_create_answers_400_naming_the_field(
        self,
        changes: dict[str, Any],
        code: int,
        named: str,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
    ) -> None:
        response = await create(api, ios_app, {**EXAMPLE, **changes})
        assert named in error(response, 400, code)
        assert await revision(runtime, ios_app) == 0

    @pytest.mark.parametrize(("changes", "code", "named"), BAD)
    async def test_update_answers_400_naming_the_field(
        self,
        changes: dict[str, Any],
        code: int,
        named: str,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
    ) -> None:
        token = await created(api, ios_app)
        before = (await get(api, ios_app, token)).json()
        assert named in error(await update(api, ios_app, token, changes), 400, code)
        assert (await get(api, ios_app, token)).json() == before

    @pytest.mark.parametrize("missing", ["name", "live", "trigger", "landing"])
    async def test_a_required_field_missing_is_code_30(
        self, missing: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {k: v for k, v in EXAMPLE.items() if k != missing}
        assert f"{missing} is required" in error(await create(api, ios_app, body), 400, 30)

    async def test_an_update_body_must_be_an_object(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        assert (await update(api, ios_app, token, ["live"])).status_code == 400


class TestKeys:
    async def test_the_dev_key_creates_dev_only_campaigns_and_changes_only_them(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        dev = ios_app.dev_api_key
        # Its campaigns are not targeted: the audience's name is not checked.
        mine = await create(
            api, ios_app, {**EXAMPLE, "targeting": {"custom_audiences": ["nobody"]}}, key=dev
        )
        assert mine.status_code == 201, mine.text
        token = mine.json()["campaign_token"]
        assert (await get(api, ios_app, token)).json()["dev_only"] is True
        assert (await update(api, ios_app, token, {"name": "Debug"}, key=dev)).status_code == 200
        live = await created(api, ios_app)
        refused = await update(api, ios_app, live, {"live": False}, key=dev)
        assert "created with the Live API key" in error(refused, 403, 12)
        refused = await api.post(url(ios_app, f"delete/{live}", key=dev), headers=ios_app.headers())
        error(refused, 403, 12)
        assert (await get(api, ios_app, live)).json()["live"] is True

    @pytest.mark.parametrize("path", ["list", "{token}", "stats/{token}"])
    async def test_the_dev_key_cannot_read(
        self, path: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        response = await api.get(
            url(ios_app, path.format(token=token), key=ios_app.dev_api_key),
            headers=ios_app.headers(),
        )
        assert "Dev API key" in error(response, 403, 12)

    async def test_another_companys_rest_key_is_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
    ) -> None:
        response = await api.post(
            url(ios_app, "create"), headers=android_app.headers(), json=EXAMPLE
        )
        assert response.status_code == 401


class TestStats:
    async def report(
        self, api: httpx.AsyncClient, app: ClientApp, install_id: str, events: list[Any]
    ) -> None:
        registered = await api.put(f"/sdk/v1/{app.api_key}/installations/{install_id}", json={})
        assert registered.is_success, registered.text
        response = await api.post(
            f"/sdk/v1/{app.api_key}/installations/{install_id}/inapp-events",
            json={"events": events},
        )
        assert response.status_code == 202, response.text

    async def test_per_day_version_and_button(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
    ) -> None:
        token = await created(api, ios_app, AB)
        day1, day2 = "2026-11-23T10:00:00Z", "2026-11-24T23:59:59Z"

        def event(kind: str, at: str, version: str, **more: Any) -> dict[str, Any]:
            return {
                "kind": f"inapp_{kind}",
                "campaign_id": token,
                "version": version,
                "occurred_at": at,
                **more,
            }

        buy = {"cta_position": 0, "cta_label": "Buy"}
        await self.report(
            api,
            ios_app,
            "i1",
            [
                event("shown", day1, "a"),
                event("clicked", day1, "a", **buy),
                event("shown", day1, "a"),
                event("closed", day1, "a"),
                event("shown", day2, "a"),
                event("clicked", day2, "a", cta_position=1, cta_label="Later"),
            ],
        )
        await self.report(
            api,
            ios_app,
            "i2",
            [
                event("shown", day1, "b"),
                event("clicked", day1, "b", **buy),
                # Another campaign's events do not count.
                {**event("shown", day1, "b"), "campaign_id": "someone-else"},
            ],
        )
        # Nor do another app's installations naming this campaign.
        await self.report(api, android_app, "i3", [event("shown", day1, "a")])

        response = await api.get(url(ios_app, f"stats/{token}"), headers=ios_app.headers())
        assert response.status_code == 200, response.text
        stats = response.json()
        assert stats["campaign_token"] == token

        def counts(supplied: int, shown: int, clicked: int, closed: int, ctas: Any) -> Any:
            return {
                "supplied": supplied,
                "shown": shown,
                "clicked": clicked,
                "closed": closed,
                "click_rate": clicked / shown,
                "ctas": [{"position": p, "label": la, "clicked": n} for p, la, n in ctas],
            }

        assert stats["detail"] == [
            {
                "date": "2026-11-23",
                **counts(0, 3, 2, 1, [(0, "Buy", 2)]),
                "versions": {
                    "a": counts(0, 2, 1, 1, [(0, "Buy", 1)]),
                    "b": counts(0, 1, 1, 0, [(0, "Buy", 1)]),
                },
            },
            {
                "date": "2026-11-24",
                **counts(0, 1, 1, 0, [(1, "Later", 1)]),
                "versions": {"a": counts(0, 1, 1, 0, [(1, "Later", 1)])},
            },
        ]

    async def test_a_campaign_without_versions_has_no_versions_and_no_rate_before_shown(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        token = await created(api, ios_app)
        stats = (await api.get(url(ios_app, f"stats/{token}"), headers=ios_app.headers())).json()
        assert stats == {"campaign_token": token, "detail": []}
        await self.report(
            api,
            ios_app,
            "i1",
            [{"kind": "inapp_closed", "campaign_id": token, "occurred_at": "2026-11-23T10:00:00"}],
        )
        stats = (await api.get(url(ios_app, f"stats/{token}"), headers=ios_app.headers())).json()
        assert stats["detail"] == [
            {"date": "2026-11-23", "supplied": 0, "shown": 0, "clicked": 0, "closed": 1, "ctas": []}
        ]

    async def test_a_bad_version_in_an_sdk_event_is_a_400(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        await api.put(f"/sdk/v1/{ios_app.api_key}/installations/i1", json={})
        response = await api.post(
            f"/sdk/v1/{ios_app.api_key}/installations/i1/inapp-events",
            json={"events": [{"kind": "inapp_shown", "campaign_id": "c", "version": "AB"}]},
        )
        assert "events.0.version" in error(response, 400, 31)
