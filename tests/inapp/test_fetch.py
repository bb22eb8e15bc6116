"""The SDK's fetch of the in-app messages due for an installation (docs/inapp.md, "Delivery to
installations"): targeting, dev/live, dates, language, A/B versions, themes, event triggers,
the ETag validator and the `inapp_supplied` count."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clarion.db import transaction
from clarion.events.models import InAppEvent, TrackedEvent
from clarion.inapp.models import InAppCampaign, InAppSupply, InAppTheme
from clarion.inapp.schemas import MAX_LIVE_CRITERIA, SdkMessages
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from clarion.targeting.schemas import Targeting
from clarion.targeting.service import installation_filter
from tests.conftest import ClientApp
from tests.inapp.support import create_campaign, delete_campaign, fetch, messages, tokens

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
# A landing in French, and for every other language in English.
BILINGUAL = {
    "contents": [
        {"language": "fr", "title": "Bonjour"},
        {"language": "default", "title": "Hello"},
    ]
}


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The fetch's clock, fixed at NOW (the test moves it)."""
    fixed = Clock(NOW)
    monkeypatch.setattr(runtime.inapp, "clock", fixed)
    return fixed


async def register(
    api: httpx.AsyncClient, app: ClientApp, install_id: str, *, dev: bool = False, **fields: Any
) -> None:
    key = app.dev_api_key if dev else app.api_key
    response = await api.put(f"/sdk/v1/{key}/installations/{install_id}", json=fields)
    assert response.status_code == 200, response.text


async def insert_install(
    runtime: Runtime, app: ClientApp, install_id: str, *, installed: datetime, seen: datetime
) -> None:
    async with transaction(runtime.sessions) as session:
        session.add(
            Installation(
                app_id=app.app_id,
                install_id=install_id,
                created_at=installed,
                last_seen_at=seen,
            )
        )


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S")


async def supplied(runtime: Runtime, app: ClientApp) -> list[tuple[str, str | None, str]]:
    await runtime.inapp_supplies.flush()
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(InAppEvent.campaign_id, InAppEvent.install_id, InAppEvent.version)
            .where(InAppEvent.app_id == app.app_id, InAppEvent.kind == "inapp_supplied")
            .order_by(InAppEvent.id)
        )
        return [(c, i, v) for c, i, v in rows]


@pytest.mark.usefixtures("clock")
class TestTargeting:
    async def test_languages_and_regions(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        french = await create_campaign(runtime, ios_app, targeting={"languages": ["fr"]})
        american = await create_campaign(runtime, ios_app, targeting={"regions": ["US"]})
        everyone = await create_campaign(runtime, ios_app)
        await register(api, ios_app, "paris", language="fr-FR", region="FR")
        await register(api, ios_app, "ohio", language="en", region="US")
        await register(api, ios_app, "nowhere")

        assert await tokens(api, ios_app, "paris") == {french, everyone}
        assert await tokens(api, ios_app, "ohio") == {american, everyone}
        assert await tokens(api, ios_app, "nowhere") == {everyone}

    async def test_segments_at_the_clock(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        new = await create_campaign(runtime, ios_app, targeting={"segments": ["NEW"]})
        await insert_install(runtime, ios_app, "fresh", installed=NOW - DAY, seen=NOW - DAY)
        await insert_install(runtime, ios_app, "old", installed=NOW - 60 * DAY, seen=NOW - DAY)

        assert await tokens(api, ios_app, "fresh") == {new}
        assert await tokens(api, ios_app, "old") == set()

    async def test_query_on_custom_data(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        for user, plan in (("u-premium", "premium"), ("u-free", "free")):
            response = await api.post(
                f"/1.0/{ios_app.api_key}/data/users/{user}",
                headers=ios_app.headers(),
                json={"values": {"u.plan": plan}},
            )
            assert response.status_code in (200, 202), response.text
            await register(api, ios_app, f"i-{user}", custom_id=user)
        premium = await create_campaign(
            runtime, ios_app, targeting={"query": {"c.plan": "premium"}}
        )

        assert await tokens(api, ios_app, "i-u-premium") == {premium}
        assert await tokens(api, ios_app, "i-u-free") == set()

    async def test_custom_audience(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "member", custom_id="vip-1")
        await register(api, ios_app, "outsider", custom_id="someone")
        response = await api.put(
            f"/1.0/{ios_app.api_key}/custom-audience/vip",
            headers=ios_app.headers(),
            json={"type": "custom_ids", "ids": ["vip-1"]},
        )
        assert response.status_code == 202, response.text
        vip = await create_campaign(runtime, ios_app, targeting={"custom_audiences": ["vip"]})

        assert await tokens(api, ios_app, "member") == {vip}
        assert await tokens(api, ios_app, "outsider") == set()

    async def test_campaigns_sharing_criteria_under_or_and_not_match_the_push_engine(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # Each criterion is evaluated once for all campaigns and combined in Python: the same
        # leaves under $and, $or and $not, with lists beside them, must give what the push
        # engine's single clause gives for every installation.
        gold, fr = {"b.region": "FR"}, {"b.language": "fr"}
        targetings: list[dict[str, Any]] = [
            {"query": gold},
            {"query": {"$not": gold}},
            {"query": {"$or": [gold, fr]}},
            {"query": {"$and": [{"$not": gold}, fr]}},
            {"query": {"$not": {"$or": [gold, fr]}}, "languages": ["en"]},
            {"regions": ["FR"], "query": {"$or": [{"$not": fr}, gold]}},
            {"languages": ["fr"], "regions": ["US"]},
        ]
        created = [await create_campaign(runtime, ios_app, targeting=t) for t in targetings]
        people = {
            "fr-fr": {"language": "fr", "region": "FR"},
            "fr-us": {"language": "fr", "region": "US"},
            "en-fr": {"language": "en", "region": "FR"},
            "en-us": {"language": "en", "region": "US"},
            "bare": {},
        }
        for install_id, fields in people.items():
            await register(api, ios_app, install_id, **fields)

        for install_id in people:
            expected = set()
            async with runtime.sessions() as session:
                for token, targeting in zip(created, targetings, strict=True):
                    matched = await session.scalar(
                        select(func.count())
                        .select_from(Installation)
                        .where(
                            Installation.app_id == ios_app.app_id,
                            Installation.install_id == install_id,
                            installation_filter(
                                Targeting.model_validate(targeting), app_id=ios_app.app_id, now=NOW
                            ),
                        )
                    )
                    if matched:
                        expected.add(token)
            assert await tokens(api, ios_app, install_id) == expected, install_id
        # Not vacuous: every campaign reaches some of them and misses others.
        received = [await tokens(api, ios_app, install_id) for install_id in people]
        for token in created:
            assert 0 < sum(token in got for got in received) < len(people)

    async def test_campaigns_past_the_criteria_budget_are_left_out_not_every_fetch_failing(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # Written around the API's check (two at once can pass it): 21 x 50 criteria would be
        # 1,050 columns, and past PostgreSQL's 1,664 a statement fails outright.
        created = [
            await create_campaign(
                runtime,
                ios_app,
                targeting={"query": {"$or": [{f"c.a{i}": f"v{n}"} for i in range(50)]}},
            )
            for n in range(MAX_LIVE_CRITERIA // 50 + 1)
        ]
        everyone = await create_campaign(runtime, ios_app)
        await register(api, ios_app, "anyone")
        assert await tokens(api, ios_app, "anyone") == {everyone}
        catalogue = await runtime.inapp.catalogue(ios_app.app_id)
        shown = {candidate.token for candidate in catalogue.candidates}
        assert shown == {*created[:-1], everyone}
        assert catalogue.criteria == MAX_LIVE_CRITERIA

    async def test_an_untargeted_installation_never_receives_it_whatever_it_asks(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await create_campaign(runtime, ios_app, targeting={"languages": ["fr"]})
        await register(api, ios_app, "english", language="en")
        for etag in (None, "*", '"0"'):
            response = await fetch(api, ios_app, "english", etag=etag)
            assert response.status_code in (200, 304)
            assert response.status_code == 304 or response.json()["messages"] == []
        assert await supplied(runtime, ios_app) == []

    async def test_dev_campaigns_reach_dev_installations_only(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        live = await create_campaign(runtime, ios_app)
        dev = await create_campaign(runtime, ios_app, dev_only=True)
        await register(api, ios_app, "store-build")
        await register(api, ios_app, "debug-build", dev=True)

        assert await tokens(api, ios_app, "store-build") == {live}
        assert await tokens(api, ios_app, "debug-build") == {dev}

    async def test_campaigns_not_live_or_deleted_are_not_handed_out(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await create_campaign(runtime, ios_app, live=False)
        deleted = await create_campaign(runtime, ios_app)
        await delete_campaign(runtime, ios_app, deleted)
        await register(api, ios_app, "someone")

        assert await tokens(api, ios_app, "someone") == set()

    async def test_a_stored_body_that_no_longer_validates_is_left_out(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        valid = await create_campaign(runtime, ios_app)
        async with transaction(runtime.sessions) as session:
            session.add(
                InAppCampaign(
                    token=secrets.token_hex(16),
                    app_id=ios_app.app_id,
                    name="old",
                    live=True,
                    body={"name": 1},
                )
            )
        await register(api, ios_app, "someone")
        assert await tokens(api, ios_app, "someone") == {valid}


@pytest.mark.usefixtures("clock")
class TestDates:
    async def test_utc_dates(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, clock: Clock
    ) -> None:
        later = await create_campaign(runtime, ios_app, start_date=_iso(NOW + timedelta(hours=1)))
        ended = await create_campaign(
            runtime, ios_app, start_date=_iso(NOW - 2 * DAY), end_date=_iso(NOW - DAY)
        )
        current = await create_campaign(
            runtime, ios_app, start_date=_iso(NOW - DAY), end_date=_iso(NOW + DAY)
        )
        await register(api, ios_app, "someone")

        (message,) = await messages(api, ios_app, "someone")
        assert message["campaign_token"] == current
        assert (message["start"], message["end"]) == (
            "2026-06-14T12:00:00Z",
            "2026-06-16T12:00:00Z",
        )

        clock.at = NOW + timedelta(hours=2)
        assert await tokens(api, ios_app, "someone") == {later, current}
        assert ended not in await tokens(api, ios_app, "someone")

    async def test_local_dates_in_the_installation_zone_else_the_app_default(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, clock: Clock
    ) -> None:
        # 13:00 wall-clock time wherever the installation is; NOW is 12:00 UTC.
        token = await create_campaign(
            runtime,
            ios_app,
            local_start_date="2026-06-15T13:00:00",
            local_end_date="2026-06-16T13:00:00",
        )
        await register(api, ios_app, "paris", timezone="Europe/Paris")  # 14:00 there
        await register(api, ios_app, "new-york", timezone="America/New_York")  # 08:00
        await register(api, ios_app, "unknown")  # the app's default zone: UTC

        (message,) = await messages(api, ios_app, "paris")
        assert message["campaign_token"] == token
        assert (message["start"], message["end"]) == (
            "2026-06-15T11:00:00Z",
            "2026-06-16T11:00:00Z",
        )
        assert await tokens(api, ios_app, "new-york") == set()
        assert await tokens(api, ios_app, "unknown") == set()

        clock.at = NOW + timedelta(hours=1)
        assert await tokens(api, ios_app, "unknown") == {token}
        assert await tokens(api, ios_app, "new-york") == set()
        clock.at = NOW + timedelta(hours=5)
        assert await tokens(api, ios_app, "new-york") == {token}
        clock.at = NOW + DAY  # 14:00 on the 16th in Paris: ended there, not yet in New York
        assert await tokens(api, ios_app, "paris") == set()
        assert await tokens(api, ios_app, "new-york") == {token}


@pytest.mark.usefixtures("clock")
class TestContent:
    async def test_language_with_fallback_to_default_then_first(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await create_campaign(
            runtime,
            ios_app,
            landing=BILINGUAL,
        )
        await register(api, ios_app, "french", language="fr_CA")
        await register(api, ios_app, "german", language="de")

        assert [m["title"] for m in await messages(api, ios_app, "french")] == ["Bonjour"]
        assert [m["title"] for m in await messages(api, ios_app, "german")] == ["Hello"]

        other = await create_campaign(
            runtime,
            ios_app,
            landing={
                "contents": [
                    {"language": "es", "title": "Hola"},
                    {"language": "fr", "title": "Salut"},
                ]
            },
        )
        await runtime.inapp_revisions.tick()
        found = {m["campaign_token"]: m["title"] for m in await messages(api, ios_app, "german")}
        assert found[other] == "Hola"

    async def test_every_field_the_sdk_needs(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        async with transaction(runtime.sessions) as session:
            session.add(
                InAppTheme(
                    app_id=ios_app.app_id,
                    code="night",
                    name="Night",
                    body={"name": "Night", "layout": "banner_top", "colours": {"text": "#EEEEEE"}},
                )
            )
        token = await create_campaign(
            runtime,
            ios_app,
            trigger={"when": "NOW", "capping": 2, "grace_period": {"every": 3, "unit": "HOURS"}},
            landing={
                "theme": "night",
                "image": "https://cdn.example.com/a.png",
                "contents": [
                    {
                        "header": "News",
                        "title": "Hi",
                        "body": "Text",
                        "actions": [
                            {"label": "Open", "action": "deeplink", "args": {"l": "app://x"}},
                            {"label": "Later", "action": "DISMISS"},
                        ],
                    }
                ],
            },
            deeplink="app://home",
            custom_payload='{"k": 1}',
        )
        await register(api, ios_app, "someone")

        answer = (await fetch(api, ios_app, "someone")).json()
        SdkMessages.model_validate(answer)
        (message,) = answer["messages"]
        assert message["campaign_token"] == token
        assert message["trigger"] == {
            "when": "now",
            "event": None,
            "label": None,
            "last_server_event_at": None,
        }
        assert (message["capping"], message["grace_period_seconds"]) == (2, 3 * 3600)
        assert message["theme"] == "night"
        theme = answer["themes"]["night"]
        assert (theme["code"], theme["layout"]) == ("night", "banner_top")
        assert theme["colours"]["text"] == "#EEEEEE"
        assert theme["colours"]["background"] == "#FFFFFF"  # the default
        assert list(answer["themes"]) == ["night"]
        assert answer["refresh_seconds"] == 300
        assert (message["header"], message["title"], message["body"]) == ("News", "Hi", "Text")
        assert message["actions"] == [
            {"label": "Open", "action": "deeplink", "args": {"l": "app://x"}},
            {"label": "Later", "action": "dismiss"},
        ]
        assert message["image"] == "https://cdn.example.com/a.png"
        assert (message["deeplink"], message["custom_payload"]) == ("app://home", {"k": 1})
        assert message["version"] is None

    async def test_the_built_in_theme_by_default_and_for_a_theme_deleted_since(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await create_campaign(runtime, ios_app)
        await create_campaign(
            runtime, ios_app, landing={"theme": "gone", "contents": [{"title": "x"}]}
        )
        await register(api, ios_app, "someone")
        answer = (await fetch(api, ios_app, "someone")).json()
        assert [m["theme"] for m in answer["messages"]] == ["default", "default"]
        assert answer["themes"]["default"]["layout"] == "modal"

    async def test_an_installation_keeps_its_ab_version(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await create_campaign(
            runtime,
            ios_app,
            landing={"contents": [{"version": "a", "title": "A"}, {"version": "b", "title": "B"}]},
            version_split={"a": 50, "b": 50},
        )
        seen: dict[str, str] = {}
        for number in range(30):
            await register(api, ios_app, f"ab-{number}")
            (message,) = await messages(api, ios_app, f"ab-{number}")
            assert message["title"] == message["version"].upper()
            seen[f"ab-{number}"] = message["version"]
        assert set(seen.values()) == {"a", "b"}
        for install_id, version in list(seen.items())[:5]:
            (message,) = await messages(api, ios_app, install_id)
            assert message["version"] == version
        assert {(v or "") for _, _, v in await supplied(runtime, ios_app)} == {"a", "b"}


@pytest.mark.usefixtures("clock")
class TestEventTriggers:
    async def test_the_users_latest_server_event_is_handed_with_the_trigger(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await create_campaign(
            runtime, ios_app, trigger={"when": "EVENT", "event": "ue.bought", "label": "shoes"}
        )
        await register(api, ios_app, "buyer", custom_id="user-7")
        (message,) = await messages(api, ios_app, "buyer")
        assert message["trigger"] == {
            "when": "event",
            "event": "ue.bought",
            "label": "shoes",
            "last_server_event_at": None,
        }

        async def send(event: dict[str, Any]) -> None:
            response = await api.post(
                f"/1.0/{ios_app.api_key}/events/users/user-7",
                headers=ios_app.headers(),
                json={"events": [event]},
            )
            assert response.status_code == 202, response.text

        await send({"name": "ue.bought", "label": "hats"})  # another label: no trigger
        (message,) = await messages(api, ios_app, "buyer")
        assert message["trigger"]["last_server_event_at"] is None

        await send({"name": "ue.bought", "label": "shoes"})
        async with runtime.sessions() as session:
            stored = await session.scalar(
                select(func.max(TrackedEvent.occurred_at)).where(
                    TrackedEvent.app_id == ios_app.app_id, TrackedEvent.label == "shoes"
                )
            )
        assert stored is not None
        (message,) = await messages(api, ios_app, "buyer")
        assert message["campaign_token"] == token
        assert message["trigger"]["last_server_event_at"] == stored.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.usefixtures("clock")
class TestValidator:
    async def test_304_until_a_campaign_changes(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        first = await create_campaign(runtime, ios_app)
        await register(api, ios_app, "someone")
        response = await fetch(api, ios_app, "someone")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "private, no-cache"
        etag = response.headers["etag"]

        again = await fetch(api, ios_app, "someone", etag=etag)
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)

        second = await create_campaign(runtime, ios_app)
        await runtime.inapp_revisions.tick()
        changed = await fetch(api, ios_app, "someone", etag=etag)
        assert changed.status_code == 200
        assert {m["campaign_token"] for m in changed.json()["messages"]} == {first, second}
        assert changed.headers["etag"] != etag

        await delete_campaign(runtime, ios_app, first)
        await runtime.inapp_revisions.tick()
        latest = await fetch(api, ios_app, "someone", etag=changed.headers["etag"])
        assert [m["campaign_token"] for m in latest.json()["messages"]] == [second]

    async def test_an_answer_of_another_app_is_not_a_304(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "same-id")
        await register(api, android_app, "same-id")
        token = await create_campaign(runtime, android_app)
        etag = (await fetch(api, ios_app, "same-id")).headers["etag"]

        response = await fetch(api, android_app, "same-id", etag=etag)
        assert response.status_code == 200
        assert [m["campaign_token"] for m in response.json()["messages"]] == [token]

    async def test_the_validator_lasts_a_minute_at_most(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, clock: Clock
    ) -> None:
        await create_campaign(
            runtime,
            ios_app,
            landing=BILINGUAL,
        )
        await register(api, ios_app, "someone", language="en")
        etag = (await fetch(api, ios_app, "someone")).headers["etag"]
        async with transaction(runtime.sessions) as session:
            installation = await session.scalar(
                select(Installation).where(
                    Installation.app_id == ios_app.app_id, Installation.install_id == "someone"
                )
            )
            assert installation is not None
            installation.language = "fr"

        # Within the minute the remembered answer stands (the documented staleness)...
        clock.at = NOW + timedelta(seconds=59)
        assert (await fetch(api, ios_app, "someone", etag=etag)).status_code == 304
        # ...after it, the installation is evaluated afresh.
        clock.at = NOW + timedelta(seconds=61)
        response = await fetch(api, ios_app, "someone", etag=etag)
        assert response.status_code == 200
        assert [m["title"] for m in response.json()["messages"]] == ["Bonjour"]

    async def test_no_304_past_a_campaigns_end(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, clock: Clock
    ) -> None:
        await create_campaign(runtime, ios_app, end_date=_iso(NOW + timedelta(seconds=30)))
        await register(api, ios_app, "someone")
        etag = (await fetch(api, ios_app, "someone")).headers["etag"]
        clock.at = NOW + timedelta(seconds=31)
        response = await fetch(api, ios_app, "someone", etag=etag)
        assert (response.status_code, response.json()["messages"]) == (200, [])

    async def test_supplied_once_per_installation_and_campaign(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        first = await create_campaign(runtime, ios_app)
        await register(api, ios_app, "one", custom_id="user-1")
        await register(api, ios_app, "two")
        for _ in range(3):
            await fetch(api, ios_app, "one")
        await fetch(api, ios_app, "two")
        assert sorted(await supplied(runtime, ios_app)) == [(first, "one", ""), (first, "two", "")]

        # A new answer hands both campaigns again; only the new one is counted.
        second = await create_campaign(runtime, ios_app)
        await runtime.inapp_revisions.tick()
        for _ in range(2):
            await fetch(api, ios_app, "one")
        assert sorted(await supplied(runtime, ios_app)) == sorted(
            [(first, "one", ""), (first, "two", ""), (second, "one", "")]
        )
        async with runtime.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(InAppSupply)
                .join(Installation, Installation.id == InAppSupply.installation_id)
                .where(Installation.app_id == ios_app.app_id)
            )
        assert count == 3
        async with runtime.sessions() as session:
            custom = await session.scalar(
                select(InAppEvent.custom_id).where(
                    InAppEvent.app_id == ios_app.app_id, InAppEvent.install_id == "one"
                )
            )
        assert custom == "user-1"


class TestBadInput:
    async def test_unknown_installation_is_a_404(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await fetch(api, ios_app, "never-registered")
        assert response.status_code == 404
        assert response.json()["code"] == 20
        assert "never-registered" in response.json()["message"]

    @pytest.mark.parametrize(
        ("install_id", "status"), [("a" * 129, 400), ("bad%20id", 400), ("bad%00", 400)]
    )
    async def test_bad_install_ids(
        self, api: httpx.AsyncClient, ios_app: ClientApp, install_id: str, status: int
    ) -> None:
        response = await api.get(
            f"/sdk/v1/{ios_app.api_key}/installations/{install_id}/inapp-messages"
        )
        assert response.status_code == status, response.text
        assert "install_id" in response.json()["message"]

    async def test_unknown_key(self, api: httpx.AsyncClient) -> None:
        for headers in ({}, {"If-None-Match": '"abc"'}, {"If-None-Match": "*"}):
            response = await api.get("/sdk/v1/nope/installations/x/inapp-messages", headers=headers)
            assert response.status_code == 401

    async def test_an_oversized_if_none_match(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await fetch(api, ios_app, "x", etag='"' + "a" * 2000 + '"')
        assert response.status_code == 400, response.text
