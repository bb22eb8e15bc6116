"""SDK API: installations, tokens and subscriptions, custom ids, events, opens, in-app events."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from clarion.db import transaction
from clarion.events.models import InAppEvent, PushEvent, TrackedEvent
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
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
