"""SDK API: installations, tokens and subscriptions, custom ids, events, opens, in-app events."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError
from sqlalchemy import select, update
from starlette.types import Receive, Scope, Send

from clarion.db import transaction
from clarion.events.models import InAppEvent, PushEvent, TrackedEvent
from clarion.http import send_answer
from clarion.runtime import Runtime
from clarion.sdk.api import EventsFastPath
from clarion.sdk.models import Installation
from clarion.sdk.schemas import TrackedEventsIn, read_plain_events
from clarion.security import hash_key
from tests.conftest import ClientApp


async def register(
    api: httpx.AsyncClient,
    app: ClientApp,
    install_id: str,
    *,
    key: str | None = None,
    **fields: Any,
) -> httpx.Response:
    return await api.put(f"/sdk/v1/{key or app.api_key}/installations/{install_id}", json=fields)


async def installation(runtime: Runtime, app: ClientApp, install_id: str) -> Installation | None:
    async with runtime.sessions() as session:
        return await session.scalar(
            select(Installation).where(
                Installation.app_id == app.app_id, Installation.install_id == install_id
            )
        )


async def push_events(runtime: Runtime, app: ClientApp) -> list[PushEvent]:
    async with runtime.sessions() as session:
        rows = await session.scalars(
            select(PushEvent).where(PushEvent.app_id == app.app_id).order_by(PushEvent.id)
        )
        return list(rows)


class TestInstallations:
    async def test_register_with_every_field(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = secrets.token_hex(32)
        response = await register(
            api,
            ios_app,
            "inst-1",
            push_token=token,
            custom_id="user-1",
            advertising_id="6D92078A-8246-4BA4-AE5B-76104861E7DC",
            language="fr",
            region="FR",
            timezone="Europe/Paris",
            app_version="2.3.1",
            os_version="17.4",
            device_model="iPhone15,2",
            push_optin=True,
        )
        assert response.status_code == 200
        body = response.json()
        assert body["push_token"] == token
        assert body["custom_id"] == "user-1"
        assert body["timezone"] == "Europe/Paris"
        stored = await installation(runtime, ios_app, "inst-1")
        assert stored is not None
        assert stored.push_optin
        assert not stored.is_dev

    async def test_reregistering_is_idempotent(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        fields = {"push_token": secrets.token_hex(32), "push_optin": True, "language": "en"}
        first = await register(api, ios_app, "inst-2", **fields)
        second = await register(api, ios_app, "inst-2", **fields)
        assert first.status_code == second.status_code == 200
        async with runtime.sessions() as session:
            rows = (
                await session.scalars(
                    select(Installation).where(Installation.app_id == ios_app.app_id)
                )
            ).all()
        assert len(rows) == 1
        kinds = [e.kind for e in await push_events(runtime, ios_app)]
        assert kinds == ["push_optin"]  # not twice

    async def test_omitted_fields_are_kept_and_null_clears(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        await register(api, ios_app, "inst-3", custom_id="u", language="en")
        kept = (await register(api, ios_app, "inst-3", region="gb")).json()  # stored upper-case
        assert (kept["custom_id"], kept["language"], kept["region"]) == ("u", "en", "GB")
        cleared = (await register(api, ios_app, "inst-3", language=None)).json()
        assert cleared["language"] is None
        assert cleared["custom_id"] == "u"

    async def test_a_token_that_moves_is_detached_from_the_old_installation(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = secrets.token_hex(32)
        await register(api, ios_app, "old", push_token=token)
        await register(api, ios_app, "new", push_token=token)
        old = await installation(runtime, ios_app, "old")
        new = await installation(runtime, ios_app, "new")
        assert old is not None
        assert old.push_token is None
        assert new is not None
        assert new.push_token == token

    async def test_optin_changes_produce_events(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "opt", push_optin=True, custom_id="opt-user")
        await register(api, ios_app, "opt", push_optin=False)
        await register(api, ios_app, "opt", push_optin=True)
        events = await push_events(runtime, ios_app)
        assert [e.kind for e in events] == ["push_optin", "push_optout", "push_optin"]
        assert all(e.install_id == "opt" and e.custom_id == "opt-user" for e in events)
        assert all(e.platform == "ios" for e in events)

    async def test_dev_key_marks_a_dev_installation(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "debug-build", key=ios_app.dev_api_key)
        stored = await installation(runtime, ios_app, "debug-build")
        assert stored is not None
        assert stored.is_dev

    async def test_web_subscription(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        vapid = await api.get(f"/sdk/v1/{web_app.api_key}/webpush/vapid-key")
        assert vapid.status_code == 200
        assert len(vapid.json()["application_server_key"]) == 87  # 65 bytes, base64url
        sub = {
            "endpoint": "https://push.example.net/wp/abc",
            "keys": {"p256dh": "B" * 87, "auth": "A" * 22},
        }
        response = await register(api, web_app, "browser-1", webpush_subscription=sub)
        assert response.status_code == 200
        stored = await installation(runtime, web_app, "browser-1")
        assert stored is not None
        assert stored.push_token == sub["endpoint"]
        assert stored.webpush_auth == "A" * 22

    async def test_bad_input_is_refused_in_batch_format(
        self, api: httpx.AsyncClient, ios_app: ClientApp, web_app: ClientApp
    ) -> None:
        bad_tz = await register(api, ios_app, "x", timezone="Mars/Olympus")
        assert (bad_tz.status_code, bad_tz.json()["code"]) == (400, 31)
        assert "timezone" in bad_tz.json()["message"]
        long_language = await register(api, ios_app, "x", language="oFd_vk3RHIiK-flLZ_Cb")
        assert (long_language.status_code, long_language.json()["code"]) == (400, 31)
        assert "language" in long_language.json()["message"]
        bad_id = await register(api, ios_app, "no spaces please")
        assert (bad_id.status_code, bad_id.json()["code"]) == (400, 31)
        token_on_web = await register(api, web_app, "w", push_token="abcdefgh12345678")
        assert (token_on_web.status_code, token_on_web.json()["code"]) == (400, 31)
        unknown_key = await api.put("/sdk/v1/NOPE/installations/x", json={})
        assert (unknown_key.status_code, unknown_key.json()["code"]) == (401, 10)


class TestCustomIds:
    async def test_attach_and_detach(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "cid")
        base = f"/sdk/v1/{ios_app.api_key}/installations/cid/custom_id"
        attached = await api.put(base, json={"custom_id": "crm-42"})
        assert attached.json()["custom_id"] == "crm-42"
        detached = await api.delete(base)
        assert detached.json()["custom_id"] is None
        missing = await api.put(
            f"/sdk/v1/{ios_app.api_key}/installations/ghost/custom_id", json={"custom_id": "a"}
        )
        assert (missing.status_code, missing.json()["code"]) == (404, 20)


class TestEvents:
    async def test_tracked_events_are_stored(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "ev", custom_id="ev-user")
        response = await api.post(
            f"/sdk/v1/{ios_app.api_key}/installations/ev/events",
            json={
                "events": [
                    {
                        "name": "add_to_cart",
                        "label": "shoes",
                        "attributes": {"price": 59.9},
                        "tags": ["sale"],
                        "occurred_at": "2026-01-02T03:04:05Z",
                    },
                    {"name": "Checkout"},
                ]
            },
        )
        assert response.status_code == 202
        assert response.json() == {"accepted": 2}
        async with runtime.sessions() as session:
            rows = (
                await session.scalars(
                    select(TrackedEvent)
                    .where(TrackedEvent.app_id == ios_app.app_id)
                    .order_by(TrackedEvent.id)
                )
            ).all()
        assert [r.name for r in rows] == ["add_to_cart", "checkout"]
        assert rows[0].attributes == {"price": 59.9}
        assert rows[0].custom_id == "ev-user"
        assert rows[0].occurred_at.year == 2026

    @pytest.mark.parametrize("name", ["has space", "_open"])
    async def test_bad_event_name(
        self, api: httpx.AsyncClient, ios_app: ClientApp, name: str
    ) -> None:
        """Names with a leading underscore are Clarion's own (app opens are `_open`)."""
        await register(api, ios_app, "ev2")
        response = await api.post(
            f"/sdk/v1/{ios_app.api_key}/installations/ev2/events",
            json={"events": [{"name": name}]},
        )
        assert (response.status_code, response.json()["code"]) == (400, 31)
        assert "events.0.name" in response.json()["message"]

    async def test_batches_arriving_together_are_each_answered(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        """Batches stored as a group (one transaction per loop turn): each keeps its own
        installation's custom id, and an unknown installation among them is still a 404."""
        for n in range(3):
            await register(api, ios_app, f"grp{n}", custom_id=f"user{n}")
        url = f"/sdk/v1/{ios_app.api_key}/installations/{{}}/events"
        answers = await asyncio.gather(
            *(
                api.post(url.format(f"grp{n % 3}"), json={"events": [{"name": f"e{n}"}] * 2})
                for n in range(9)
            ),
            api.post(url.format("nobody"), json={"events": [{"name": "lost"}]}),
        )
        assert [a.status_code for a in answers] == [202] * 9 + [404]
        assert all(a.json() == {"accepted": 2} for a in answers[:9])
        assert answers[9].json()["code"] == 20
        async with runtime.sessions() as session:
            rows = await session.execute(
                select(TrackedEvent.name, TrackedEvent.install_id, TrackedEvent.custom_id).where(
                    TrackedEvent.app_id == ios_app.app_id
                )
            )
            stored = sorted(tuple(row) for row in rows)
        assert stored == sorted(
            (f"e{n}", f"grp{n % 3}", f"user{n % 3}") for n in range(9) for _ in range(2)
        )

    async def test_last_visit_moves_at_most_once_a_minute(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "seen")
        long_ago = datetime.now(UTC) - timedelta(minutes=5)
        async with transaction(runtime.sessions) as session:
            await session.execute(
                update(Installation)
                .where(Installation.app_id == ios_app.app_id, Installation.install_id == "seen")
                .values(last_seen_at=long_ago)
            )
        url = f"/sdk/v1/{ios_app.api_key}/installations/seen/events"
        visits = []
        for _ in range(2):
            response = await api.post(url, json={"events": [{"name": "tap"}]})
            assert response.status_code == 202
            found = await installation(runtime, ios_app, "seen")
            assert found is not None
            visits.append(found.last_seen_at)
        assert visits[0] > long_ago + timedelta(minutes=4)
        assert visits[1] == visits[0]

    async def test_events_are_stored_as_sent(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        """Through the fast path, read plainly or by the model (a number as label, a date
        with an offset), and through the route (the key's first call): the same rows."""
        await register(api, ios_app, "exact", custom_id="who")
        url = f"/sdk/v1/{ios_app.api_key}/installations/exact/events"
        later = datetime.now(UTC) + timedelta(days=1)
        events = [
            {"name": "Plain", "label": "l", "attributes": {"a": [1, 2.5, "é"]}, "tags": []},
            {"name": "dated", "occurred_at": "2026-01-02T03:04:05.123Z"},
            {"name": "offset", "occurred_at": "2026-01-02T05:04:05.123456+02:00", "label": 7},
            {"name": "future", "occurred_at": later.isoformat(), "attributes": []},
        ]
        before = datetime.now(UTC)
        for _ in range(2):  # the key's first call goes through the route, the second not
            answer = await api.post(url, json={"events": events})
            assert answer.json() == {"accepted": 4}
        async with runtime.sessions() as session:
            rows = (
                await session.execute(
                    select(
                        TrackedEvent.name,
                        TrackedEvent.label,
                        TrackedEvent.attributes,
                        TrackedEvent.tags,
                        TrackedEvent.custom_id,
                        TrackedEvent.occurred_at,
                    )
                    .where(TrackedEvent.app_id == ios_app.app_id)
                    .order_by(TrackedEvent.id)
                )
            ).all()
        assert len(rows) == 8
        for stored in (rows[:4], rows[4:]):
            assert [tuple(r[:5]) for r in stored] == [
                ("plain", "l", {"a": [1, 2.5, "é"]}, [], "who"),
                ("dated", None, None, None, "who"),
                ("offset", "7", None, None, "who"),
                ("future", None, None, None, "who"),
            ]
            exact = datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
            assert [r.occurred_at for r in stored[1:3]] == [
                exact,
                exact + timedelta(microseconds=456),
            ]
            assert before <= stored[3].occurred_at <= datetime.now(UTC)  # not in the future

    async def test_a_group_of_several_apps_moves_only_the_installations_called(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        android_app: ClientApp,
        runtime: Runtime,
    ) -> None:
        """Both apps have installations "a" and "b"; one group stores iOS "a" and Android "b":
        each gets its own app's custom id, and only those two get a new last visit."""
        for app in (ios_app, android_app):
            for name in ("a", "b"):
                await register(api, app, name, custom_id=f"{app.platform}-{name}")
        long_ago = datetime.now(UTC) - timedelta(minutes=5)
        async with transaction(runtime.sessions) as session:
            await session.execute(
                update(Installation)
                .where(Installation.app_id.in_([ios_app.app_id, android_app.app_id]))
                .values(last_seen_at=long_ago)
            )
        calls = [(ios_app, "a"), (android_app, "b")]
        for app, name in calls:  # the keys' first calls (through the route)
            await api.post(
                f"/sdk/v1/{app.api_key}/installations/{name}/events",
                json={"events": [{"name": "warm"}]},
            )
        async with transaction(runtime.sessions) as session:
            await session.execute(update(Installation).values(last_seen_at=long_ago))
        answers = await asyncio.gather(
            *(
                api.post(
                    f"/sdk/v1/{app.api_key}/installations/{name}/events",
                    json={"events": [{"name": "grouped"}]},
                )
                for app, name in calls
            )
        )
        assert [a.status_code for a in answers] == [202, 202]
        async with runtime.sessions() as session:
            stored = await session.execute(
                select(TrackedEvent.app_id, TrackedEvent.install_id, TrackedEvent.custom_id).where(
                    TrackedEvent.name == "grouped"
                )
            )
            seen = await session.execute(
                select(Installation.app_id, Installation.install_id).where(
                    Installation.last_seen_at > long_ago
                )
            )
            assert sorted(stored) == sorted(
                [(ios_app.app_id, "a", "ios-a"), (android_app.app_id, "b", "android-b")]
            )
            assert sorted(seen) == sorted([(ios_app.app_id, "a"), (android_app.app_id, "b")])

    async def test_a_key_missing_from_the_cache_is_looked_up_once_by_the_fast_path(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        """Calls arriving together when the key's cache entry has expired: one lookup for
        all of them, and none goes on to the route (FastAPI's, ~10x the CPU of the fast
        path's). The route is what a call reaching `routed` would have met."""
        await register(api, ios_app, "cold")
        reached: list[str] = []

        async def routed(scope: Scope, receive: Receive, send: Send) -> None:
            reached.append(scope["path"])
            await send_answer(send, 599, [])

        fast = EventsFastPath(
            routed,
            key_cache=runtime.key_cache,
            sessions=runtime.sessions,
            intake=runtime.sdk_events,
        )
        runtime.key_cache.forget(hash_key(ios_app.api_key))
        transport = httpx.ASGITransport(app=fast)
        async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"/sdk/v1/{ios_app.api_key}/installations/cold/events",
                        json={"events": [{"name": "tap"}]},
                    )
                    for _ in range(20)
                ),
                client.post(
                    "/sdk/v1/not-a-key/installations/cold/events",
                    json={"events": [{"name": "tap"}]},
                ),
            )
        assert [a.status_code for a in answers] == [202] * 20 + [599]
        assert reached == ["/sdk/v1/not-a-key/installations/cold/events"]
        assert runtime.key_cache.app(ios_app.api_key) is not None

    @pytest.mark.parametrize(
        ("body", "code", "named"),
        [
            (b'{"events": [{"name": "ok"}', 32, "JSON"),
            (b'{"events": [{"name": "ok", "colour": 1}]}', 31, "events.0.colour"),
            (b'{"events": []}', 31, "events"),
        ],
    )
    async def test_a_bad_batch_from_a_known_key_gets_batchs_error(
        self, api: httpx.AsyncClient, ios_app: ClientApp, body: bytes, code: int, named: str
    ) -> None:
        """With the key cached (a first call accepted), the bad body is still Batch's 400."""
        await register(api, ios_app, "bad")
        url = f"/sdk/v1/{ios_app.api_key}/installations/bad/events"
        assert (await api.post(url, json={"events": [{"name": "ok"}]})).status_code == 202
        response = await api.post(url, content=body, headers={"Content-Type": "application/json"})
        assert (response.status_code, response.json()["code"]) == (400, code)
        assert named in response.json()["message"]

    async def test_a_chunked_batch_over_the_limit_is_refused_as_too_large(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        await register(api, ios_app, "big")
        url = f"/sdk/v1/{ios_app.api_key}/installations/big/events"
        assert (await api.post(url, json={"events": [{"name": "ok"}]})).status_code == 202

        async def chunked() -> AsyncIterator[bytes]:
            yield b'{"events": [{"name": "ok", "label": "'
            for _ in range(40):
                yield b"a" * 65536
            yield b'"}]}'

        response = await api.post(
            url, content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert (response.status_code, response.json()["code"]) == (400, 31)
        assert "larger than 1024 KiB" in response.json()["message"]

    async def test_push_open_is_attributed_to_its_send(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "opener", custom_id="reader")
        sent = await api.post(
            f"/1.1/{ios_app.api_key}/transactional/send",
            headers=ios_app.headers(),
            json={
                "group_id": "news",
                "recipients": {"custom_ids": ["nobody"]},
                "message": {"body": "hi"},
            },
        )
        token = sent.json()["token"]
        response = await api.post(
            f"/sdk/v1/{ios_app.api_key}/installations/opener/opens", json={"send_id": token}
        )
        assert response.status_code == 202
        opened = [e for e in await push_events(runtime, ios_app) if e.kind == "push_opened"]
        assert len(opened) == 1
        assert (opened[0].send_token, opened[0].group_id) == (token, "news")
        assert opened[0].custom_id == "reader"

    async def test_inapp_events(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "ia")
        response = await api.post(
            f"/sdk/v1/{ios_app.api_key}/installations/ia/inapp-events",
            json={
                "events": [
                    {"kind": "inapp_shown", "campaign_id": "c1"},
                    {
                        "kind": "inapp_clicked",
                        "campaign_id": "c1",
                        "cta_position": 1,
                        "cta_label": "Buy",
                    },
                ]
            },
        )
        assert response.status_code == 202
        async with runtime.sessions() as session:
            rows = (
                await session.scalars(select(InAppEvent).where(InAppEvent.app_id == ios_app.app_id))
            ).all()
        assert sorted(r.kind for r in rows) == ["inapp_clicked", "inapp_shown"]
        clicked = next(r for r in rows if r.kind == "inapp_clicked")
        assert (clicked.cta_position, clicked.cta_label) == (1, "Buy")
        bad = await api.post(
            f"/sdk/v1/{ios_app.api_key}/installations/ia/inapp-events",
            json={"events": [{"kind": "inapp_exploded", "campaign_id": "c1"}]},
        )
        assert (bad.status_code, bad.json()["code"]) == (400, 31)
        # Supplies are the server's count (once per installation and campaign): an SDK that
        # reported them would inflate it as often as it liked.
        supplied = await api.post(
            f"/sdk/v1/{ios_app.api_key}/installations/ia/inapp-events",
            json={"events": [{"kind": "inapp_supplied", "campaign_id": "c1"}]},
        )
        assert (supplied.status_code, supplied.json()["code"]) == (400, 31)
        assert "events.0.kind" in supplied.json()["message"]


def _bodies() -> list[bytes]:
    """Event batches as apps and pages send them, and many a client might, good and bad."""
    seen = "2026-12-06T14:40:53.123Z"
    bodies = [
        b'{"events": [{"name": "screen_view"}]}',
        b'{"events":[{"name":"Add_To_Cart","label":"","attributes":{},"tags":[]}]}',
        orjson.dumps({"events": [{"name": "tap", "occurred_at": seen}] * 100}),
        b'{"events": [{"name": "a", "name": "b"}], "events": [{"name": "c"}]}',  # last wins
        b'{"events": [{"name": "a", "attributes": {"k": 1, "k": 2.5}}]}',
        b'  {"events": [{"name": "a"}]}\n',
    ]
    # Each field's edge cases, in an otherwise good event.
    values: dict[str, list[Any]] = {
        "name": ["_open", "has space", "a" * 30, "a" * 31, "é", 1, None, "", "A1_"],
        "label": ["x" * 200, "x" * 201, 42, 4.2, True, None, "é" * 200, "\ufffe", "a\u0000"],
        "attributes": [
            {"n": 2**63 - 1},
            {"n": 2**63},
            {"n": -(2**63)},
            {"n": -(2**63) - 1},
            {"n": 2**64 - 1},
            {"f": 1e19},
            {"f": -0.0},
            {"f": 1.7976931348623157e308},
            {"f": 5e-324},
            {"deep": {"a": [{"b": [1, {"c": None}]}]}},
            {"s": "tab\there"},
            {"s": "bell\u0007"},
            {"k\u0000": 1},
            {"s": "\uffff"},
            [],
            [1],
            "text",
            None,
            True,
        ],
        "tags": [[], [""], ["t"] * 25, ["t"] * 26, ["x" * 64], ["x" * 65], [1, 2], None, "t"],
        "occurred_at": [
            seen,
            "2026-12-06T14:40:53Z",
            "2026-12-06T14:40:53.1Z",
            "2026-12-06T14:40:53.123456Z",
            "2026-12-06T14:40:53.1234567Z",
            "2026-12-06T14:40:53.123+02:00",
            "2026-12-06T14:40:53",
            "2026-12-06 14:40:53Z",
            "2026-02-30T00:00:00Z",
            "2026-12-06T24:00:00Z",
            "2026-12-06T23:59:60Z",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "0001-01-02T00:00:00Z",
            "9999-12-30T00:00:00Z",
            "9999-12-30T00:00:01Z",
            "2026-12-06t14:40:53Z",
            1765032053,
            1765032053.5,
            "1765032053",
            None,
        ],
        "colour": ["red"],
    }
    for field, choices in values.items():
        for value in choices:
            event = {"name": "base", field: value}
            bodies.append(json.dumps({"events": [event]}).encode())
    depth = 1 + 250
    bodies.append(
        b'{"events": [{"name": "a", "attributes": {"k": ' + b"[" * depth + b"]" * depth + b"}}]}"
    )
    bodies += [
        b'{"events": []}',
        b'{"events": null}',
        b'{"events": [{"name": "a"}], "more": 1}',
        b'{"events": [' + b",".join([b'{"name": "a"}'] * 101) + b"]}",
        b'{"events": ["a"]}',
        b'{"events": [{"name": "a"}]',
        b'{"events": [{"name": "a", "label": "caf\\u00e9"}]}',
        b'{"events": [{"name": "a", "label": "\\ud800"}]}',
        b'{"events": [{"name": "a", "attributes": {"n": 1e400}}]}',
        b'{"events": [{"name": "a", "attributes": {"n": NaN}}]}',
        b'{"events": [{"name": "a", "attributes": {"n": 18446744073709551616}}]}',
        b'{"events": [{"name": "a", "label": "\xff"}]}',
        b"[]",
    ]
    # Numbers as clients write them: both parsers must round each to the same float.
    rng = random.Random(18)
    for _ in range(300):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        number = f"{rng.choice(['', '-'])}{digits[0]}.{digits[1:] or '0'}e{rng.randint(-330, 310)}"
        bodies.append(b'{"events": [{"name": "n", "attributes": {"x": %s}}]}' % number.encode())
    return bodies


class TestPlainEventsReader:
    """The fast path's reader of event batches (read_plain_events) against the model it stands
    in for: whatever it accepts, TrackedEventsIn accepts too, with the same values."""

    @pytest.mark.parametrize("body", _bodies())
    def test_accepts_only_what_the_model_accepts_with_the_same_values(self, body: bytes) -> None:
        plain = read_plain_events(body)
        try:
            model = TrackedEventsIn.model_validate_json(body).as_tuples()
        except ValidationError:
            assert plain is None
            return
        if plain is not None:
            # Through orjson: 1 and 1.0 differ, as they would in the stored JSON.
            assert orjson.dumps(plain) == orjson.dumps(model)

    def test_reads_what_the_sdks_send(self) -> None:
        """Without the slower model: the Web SDK's batches (dates from toISOString) and those
        of bench/sdk_events.py (as json.dumps writes them)."""
        web = {"events": [{"name": "click", "occurred_at": "2026-12-06T14:40:53.123Z"}]}
        app = {
            "events": [
                {"name": "screen_view"},
                {"name": "add_to_cart", "label": "item-1"},
                {
                    "name": "purchase",
                    "attributes": {"amount": 14.5, "currency": "EUR", "items": 2},
                    "tags": ["promo", "mobile"],
                },
            ]
        }
        assert read_plain_events(orjson.dumps(web)) is not None
        assert read_plain_events(json.dumps(app).encode()) is not None
