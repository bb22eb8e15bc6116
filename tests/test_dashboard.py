"""The dashboard over HTTP (no browser): sign-in, sessions, CSRF, roles, tenancy, and the
campaign editor's forms read with the Campaigns API's rules. The browser tests are in
test_dashboard_e2e.py."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from clarion.apps.models import App
from clarion.campaigns.models import Campaign
from clarion.dashboard import service
from clarion.dashboard.models import DashboardSession, DashboardUser, Role
from clarion.dashboard.web import SESSION_COOKIE
from clarion.db import transaction, utcnow
from clarion.errors import ClarionError
from clarion.events.models import APP_OPEN_EVENT, PushEventKind
from clarion.events.service import push_event_row, record_push_events, record_tracked_events
from clarion.runtime import Runtime
from clarion.security import hash_key
from tests.conftest import ClientApp
from tests.support.dashboard import (
    PASSWORD,
    client_at,
    create_account,
    form_sign_in,
    new_client_address,
    sign_in_as,
)

pytestmark = pytest.mark.usefixtures("api")


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no {name} field"
    return found.group(1)


def campaign_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "Spring sale",
        "when": "date",
        "push_time": "2031-03-01T09:00",
        "message_version": [""],
        "message_language": ["default"],
        "message_title": ["Spring"],
        "message_body": ["Everything -20 %"],
        "action": "draft",
    }
    fields.update(changes)
    return fields


async def stored_campaign(runtime: Runtime, app: ClientApp) -> Campaign:
    async with runtime.sessions() as session:
        campaign = await session.scalar(
            select(Campaign).where(Campaign.app_id == app.app_id).order_by(Campaign.id.desc())
        )
    assert campaign is not None
    return campaign


class TestSignIn:
    async def test_the_sign_in_form_opens_a_session(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        async with runtime.sessions() as session:
            company_id = await session.scalar(
                select(App.company_id).where(App.id == ios_app.app_id)
            )
        assert company_id is not None
        email = await create_account(runtime, company_id=company_id, role=Role.EDITOR)
        form = await api.get("/dashboard/login?next=/dashboard/apps/1/campaigns")
        assert form.status_code == 200
        signed = await api.post(
            "/dashboard/login",
            data={
                "email": email.upper(),  # e-mails are case-insensitive
                "password": PASSWORD,
                "csrf_token": hidden(form.text, "csrf_token"),
                "next": "/dashboard/apps/1/campaigns",
            },
        )
        assert signed.status_code == 303
        assert signed.headers["location"] == "/dashboard/apps/1/campaigns"
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=lax" in cookie.replace("samesite", "SameSite")
        home = await api.get("/dashboard/")
        assert home.status_code == 200
        assert email in home.text
        # Only the token's hash is stored.
        token = api.cookies[SESSION_COOKIE]
        async with runtime.sessions() as session:
            stored = await session.scalar(
                select(DashboardSession.token_hash).where(
                    DashboardSession.token_hash == hash_key(token)
                )
            )
        assert stored is not None

    async def test_a_post_from_another_site_cannot_sign_in(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        api.cookies.clear()
        forged = await api.post(
            "/dashboard/login",
            data={"email": login.email, "password": PASSWORD, "csrf_token": "guessed"},
        )
        assert forged.status_code == 401
        assert "expired" in forged.text
        assert SESSION_COOKIE not in forged.headers.get("set-cookie", "")

    async def test_wrong_password_and_unknown_email_read_the_same(
        self, clarion_app: FastAPI, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        answers = []
        async with client_at(clarion_app, new_client_address()) as client:
            for email in (login.email, "nobody@example.com"):
                answer = await form_sign_in(client, email, "wrong password!")
                answers.append((answer.status_code, "Wrong e-mail or password." in answer.text))
        assert answers == [(401, True), (401, True)]

    async def test_only_dashboard_paths_are_followed_after_sign_in(
        self, api: httpx.AsyncClient
    ) -> None:
        form = await api.get("/dashboard/login?next=https://evil.example/")
        assert hidden(form.text, "next") == "/dashboard/"

    async def test_expired_and_signed_out_sessions_lead_back_to_sign_in(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        login.use(api)
        assert (await api.get("/dashboard/")).status_code == 200
        async with runtime.sessions() as session, session.begin():
            await session.execute(
                update(DashboardSession)
                .where(DashboardSession.token_hash == hash_key(login.token))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        expired = await api.get("/dashboard/")
        assert expired.status_code == 303
        assert expired.headers["location"].startswith("/dashboard/login")

        other = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        other.use(api)
        out = await api.post("/dashboard/logout", data={"csrf_token": other.csrf})
        assert out.status_code == 303
        api.cookies.set(SESSION_COOKIE, other.token)  # a copy of the cookie kept elsewhere
        assert (await api.get("/dashboard/")).status_code == 303


class TestProtections:
    async def test_posts_need_the_session_csrf_token(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        login.use(api)
        refused = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/keys/rotate", data={"csrf_token": "nope"}
        )
        assert refused.status_code == 403
        assert "reload the page" in refused.text
        # The keys still work.
        assert (await api.get(f"/sdk/v1/{ios_app.api_key}/installations/x")).status_code != 401

    async def test_pages_carry_a_strict_content_security_policy(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)
        page = await api.get(f"/dashboard/apps/{ios_app.app_id}/campaigns")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"

    async def test_another_companys_app_is_not_found(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)).use(api)
        for path in ("campaigns", "settings", "campaigns/new"):
            page = await api.get(f"/dashboard/apps/{android_app.app_id}/{path}")
            assert page.status_code == 404, path
        assert "Shop" not in (await api.get("/dashboard/")).text

    async def test_editors_neither_see_nor_rotate_keys(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
        login.use(api)
        settings = await api.get(f"/dashboard/apps/{ios_app.app_id}/settings")
        assert "Only admins see and rotate API keys." in settings.text
        assert "keys/rotate" not in settings.text
        for path in (
            "keys/rotate",
            "rest-key/rotate",
            "credentials",
            "test-push",
            "allowed-origins",
        ):
            refused = await api.post(
                f"/dashboard/apps/{ios_app.app_id}/{path}", data={"csrf_token": login.csrf}
            )
            assert refused.status_code == 403, path
        answer = await api.get(f"/1.1/{ios_app.api_key}/campaigns/list", headers=ios_app.headers())
        assert answer.status_code == 200  # the REST and Live keys were not rotated

    async def test_an_admin_rotates_keys_and_the_old_ones_stop(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        login.use(api)
        page = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/rest-key/rotate", data={"csrf_token": login.csrf}
        )
        new_rest_key = re.search(r'id="rest-key">([0-9a-f]{32})<', page.text)
        assert new_rest_key is not None
        runtime.key_cache.forget(hash_key(ios_app.rest_key))
        url = f"/1.1/{ios_app.api_key}/campaigns/list"
        assert (await api.get(url, headers=ios_app.headers())).status_code == 401
        fresh = {"X-Authorization": new_rest_key.group(1)}
        assert (await api.get(url, headers=fresh)).status_code == 200


class TestTeam:
    async def test_an_admin_adds_people_with_the_api_rules(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        login.use(api)
        short = await api.post(
            "/dashboard/team",
            data={
                "csrf_token": login.csrf,
                "email": "x@example.com",
                "password": "short",
                "role": "editor",
            },
        )
        assert short.status_code == 400
        assert "password" in short.text
        added = await api.post(
            "/dashboard/team",
            data={
                "csrf_token": login.csrf,
                "email": "Ed@Example.com",
                "password": "a long enough password",
                "role": "editor",
            },
        )
        assert added.status_code == 200
        assert "ed@example.com can now sign in." in added.text
        again = await api.post(
            "/dashboard/team",
            data={
                "csrf_token": login.csrf,
                "email": "ed@example.com",
                "password": "a long enough password",
                "role": "viewer",
            },
        )
        assert "exists already" in again.text

    async def test_an_admin_changes_a_role_or_disables_an_account_at_once(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, clarion_app: FastAPI
    ) -> None:
        admin = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        editor = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
        editor_id = (await user_ids(runtime, editor.email))[editor.email]
        transport = httpx.ASGITransport(app=clarion_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as other:
            editor.use(other)
            campaigns = f"/dashboard/apps/{ios_app.app_id}/campaigns"
            draft = campaign_fields(csrf_token=editor.csrf)
            assert (await other.post(campaigns, data=draft)).status_code == 303

            admin.use(api)
            demoted = await api.post(
                f"/dashboard/team/{editor_id}",
                data={"csrf_token": admin.csrf, "role": "viewer", "status": "active"},
            )
            assert demoted.status_code == 200
            assert f"{editor.email} is now viewer." in demoted.text
            # The role is read on every request: the open session is a viewer's now.
            assert (await other.post(campaigns, data=draft)).status_code == 403
            # A viewer changes no account, and a bad form tells them no more than that.
            bad_form = {"csrf_token": editor.csrf, "role": "owner", "status": "active"}
            refused = await other.post(f"/dashboard/team/{editor_id}", data=bad_form)
            assert refused.status_code == 403
            assert "only an admin can do this" in refused.text

            disabled = await api.post(
                f"/dashboard/team/{editor_id}",
                data={"csrf_token": admin.csrf, "role": "viewer", "status": "disabled"},
            )
            assert f"{editor.email} can no longer sign in." in disabled.text
            home = await other.get("/dashboard/", follow_redirects=False)
            assert home.status_code == 303
            assert home.headers["location"].startswith("/dashboard/login")
            async with transaction(runtime.sessions) as session:
                with pytest.raises(ClarionError, match="wrong e-mail or password"):
                    await service.sign_in(
                        session,
                        email=editor.email,
                        password=PASSWORD,
                        client=new_client_address(),
                        now=utcnow(),
                    )

    async def test_nobody_changes_their_own_account_or_another_companys(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp, runtime: Runtime
    ) -> None:
        admin = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        stranger = await sign_in_as(runtime, app_id=android_app.app_id, role=Role.EDITOR)
        ids = await user_ids(runtime, admin.email, stranger.email)
        admin.use(api)
        change = {"csrf_token": admin.csrf, "role": "viewer", "status": "active"}
        own = await api.post(f"/dashboard/team/{ids[admin.email]}", data=change)
        assert own.status_code == 403
        assert "another admin can" in own.text
        other_company = await api.post(f"/dashboard/team/{ids[stranger.email]}", data=change)
        assert other_company.status_code == 404
        bad_role = await api.post(
            f"/dashboard/team/{ids[stranger.email]}", data={**change, "role": "owner"}
        )
        assert bad_role.status_code == 400
        async with runtime.sessions() as session:
            roles = set(
                await session.scalars(
                    select(DashboardUser.role).where(DashboardUser.id.in_(ids.values()))
                )
            )
        assert roles == {"admin", "editor"}  # nothing changed


class TestCampaignEditor:
    async def test_a_draft_from_the_form_is_what_the_api_reads(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
        login.use(api)
        fields = campaign_fields(
            q_field=["c.plan", "b.language"],
            q_op=["$eq", "$in"],
            q_value=["premium", "fr, en"],
            q_join="and",
            segments=["ENGAGED"],
            deeplink="shop://spring",
            custom_payload='{"sale": 20}',
            gcm_collapse_key="spring",
        )
        saved = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/campaigns", data={**fields, "csrf_token": login.csrf}
        )
        assert saved.status_code == 303, saved.text
        token = saved.headers["location"].split("/")[-1].split("?")[0]
        read = await api.get(f"/1.1/{ios_app.api_key}/campaigns/{token}", headers=ios_app.headers())
        body = read.json()
        assert body["from_api"] is False
        assert body["live"] is False
        assert body["push_time"] == "2031-03-01T09:00:00"
        assert body["messages"] == [
            {"language": "default", "title": "Spring", "body": "Everything -20 %"}
        ]
        assert body["targeting"] == {
            "segments": ["ENGAGED"],
            "query": {
                "$and": [{"c.plan": {"$eq": "premium"}}, {"b.language": {"$in": ["fr", "en"]}}]
            },
        }
        assert body["deeplink"] == "shop://spring"
        assert body["gcm_collapse_key"] == "spring"
        editor = await api.get(f"/dashboard/apps/{ios_app.app_id}/campaigns/{token}")
        assert 'name="gcm_collapse_key" value="spring"' in editor.text
        assert 'value="ENGAGED" checked' in editor.text
        listed = await api.get(
            f"/dashboard/apps/{ios_app.app_id}/campaigns?origin=dashboard&q=SPRING"
        )
        assert "Spring sale" in listed.text
        none = await api.get(f"/dashboard/apps/{ios_app.app_id}/campaigns?origin=api")
        assert "Spring sale" not in none.text

    async def test_bad_input_gets_the_api_message_and_nothing_is_saved(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
        login.use(api)
        page = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/campaigns",
            data={
                **campaign_fields(q_field=["c.age"], q_op=["$foo"], q_value=["3"]),
                "csrf_token": login.csrf,
            },
        )
        assert page.status_code == 400
        api_answer = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/create",
            headers=ios_app.headers(),
            json={
                "name": "Spring sale",
                "live": False,
                "push_time": "2031-03-01T09:00:00",
                "messages": [{"language": "default", "body": "x"}],
                "targeting": {"query": {"c.age": {"$foo": 3}}},
            },
        )
        message = api_answer.json()["message"]
        assert message in page.text.replace("&#39;", "'")
        async with runtime.sessions() as session:
            count = await session.scalar(
                select(Campaign.id).where(Campaign.app_id == ios_app.app_id)
            )
        assert count is None  # neither the form nor the API saved anything
        # The form comes back with what was typed.
        assert 'value="Spring sale"' in page.text

    async def test_editing_replaces_the_draft_and_live_then_stop(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
        login.use(api)
        fields = {**campaign_fields(deeplink="shop://one"), "csrf_token": login.csrf}
        saved = await api.post(f"/dashboard/apps/{ios_app.app_id}/campaigns", data=fields)
        path = saved.headers["location"].split("?")[0]
        # The deeplink is cleared and the campaign goes live: the editor sends the whole
        # campaign, so a cleared field is removed (the API's merge would refuse that).
        fields.update(deeplink="", action="live")
        live = await api.post(path, data=fields)
        assert live.status_code == 303
        assert live.headers["location"].endswith("notice=live")
        campaign = await stored_campaign(runtime, ios_app)
        assert campaign.state == "scheduled"
        assert "deeplink" not in campaign.body
        stop = await api.post(path, data={"csrf_token": login.csrf, "action": "stop"})
        assert stop.headers["location"].endswith("notice=stopped")
        campaign = await stored_campaign(runtime, ios_app)
        assert campaign.state == "draft"  # scheduled, never sent: back to draft
        editor = await api.get(path)
        assert campaign.token in editor.text
        assert "Copy token" in editor.text

    async def test_the_estimate_follows_the_targeting(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        for number, language in enumerate(["fr", "fr", "en"]):
            response = await api.put(
                f"/sdk/v1/{ios_app.api_key}/installations/est-{number}",
                json={"push_token": f"{number:064x}", "push_optin": True, "language": language},
            )
            assert response.status_code in (200, 201)
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        login.use(api)
        url = f"/dashboard/apps/{ios_app.app_id}/estimate"
        headers = {"X-CSRF-Token": login.csrf}
        everyone = await api.post(url, headers=headers, data={})
        assert "<strong>3</strong>" in everyone.text
        french = await api.post(
            url, headers=headers, data={"q_field": "b.language", "q_op": "$eq", "q_value": "fr"}
        )
        assert "<strong>2</strong>" in french.text
        broken = await api.post(url, headers=headers, data={"query_json": '{"c.a": {"$foo": 1}}'})
        assert "targeting.query.c.a: unknown operator" in broken.text.replace("&#39;", "'")
        missing = await api.post(url, headers=headers, data={"custom_audiences": "ghost"})
        assert "no custom audience named" in missing.text.replace("&#39;", "'")

    async def test_ab_versions_local_time_and_recurrence_round_trip(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
        login.use(api)
        fields = campaign_fields(
            when="local",
            local_push_time="2031-03-01T09:30:00",
            push_time="",
            message_version=["a", "b", "a"],
            message_language=["en", "en", "fr"],
            message_title=["", "", ""],
            message_body=["Version A", "Version B", "Version A en français"],
            version_split="a=70, b=30",
            repeat_unit="WEEKLY",
            repeat_frequency="2",
            occurrences="5",
            capping="3",
        )
        saved = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/campaigns", data={**fields, "csrf_token": login.csrf}
        )
        assert saved.status_code == 303, saved.text
        campaign = await stored_campaign(runtime, ios_app)
        assert campaign.body["local_push_time"] == "2031-03-01T09:30:00"
        assert campaign.body["version_split"] == {"a": 70, "b": 30}
        assert campaign.body["recurrence"] == {
            "repeat_unit": "WEEKLY",
            "repeat_frequency": 2,
            "occurrences": 5,
        }
        assert campaign.body["capping"] == 3
        assert [m["version"] for m in campaign.body["messages"]] == ["a", "b", "a"]
        editor = (await api.get(saved.headers["location"])).text
        assert 'value="a=70, b=30"' in editor
        assert 'value="local" checked' in editor
        assert '<option value="WEEKLY" selected>' in editor
        # A split that does not add up is refused with the API's message.
        fields["version_split"] = "a=70, b=20"
        refused = await api.post(
            saved.headers["location"].split("?")[0], data={**fields, "csrf_token": login.csrf}
        )
        assert refused.status_code == 400
        assert "version_split: the shares must add up to 100" in refused.text


class TestReviewFindings:
    async def test_non_ascii_csrf_tokens_are_refused_not_crashed(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        login.use(api)
        refused = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/keys/rotate", data={"csrf_token": "é"}
        )
        assert refused.status_code == 403
        api.cookies.clear()
        form = await api.get("/dashboard/login")
        assert form.status_code == 200
        signed = await api.post(
            "/dashboard/login", data={"email": login.email, "password": PASSWORD, "csrf_token": "é"}
        )
        assert signed.status_code == 401

    async def test_stop_works_when_the_audience_was_deleted_since(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        put = await api.put(
            f"/1.0/{ios_app.api_key}/custom-audience/soon-gone",
            headers=ios_app.headers(),
            json={"type": "custom_ids", "ids": ["u1"]},
        )
        assert put.status_code in (200, 201, 202), put.text
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
        login.use(api)
        fields = {
            **campaign_fields(custom_audiences="soon-gone", action="live"),
            "csrf_token": login.csrf,
        }
        saved = await api.post(f"/dashboard/apps/{ios_app.app_id}/campaigns", data=fields)
        path = saved.headers["location"].split("?")[0]
        assert (await stored_campaign(runtime, ios_app)).state == "scheduled"
        gone = await api.delete(
            f"/1.0/{ios_app.api_key}/custom-audience/soon-gone", headers=ios_app.headers()
        )
        assert gone.status_code in (200, 202, 204)
        stop = await api.post(path, data={"csrf_token": login.csrf, "action": "stop"})
        assert stop.status_code == 303
        campaign = await stored_campaign(runtime, ios_app)
        assert campaign.state == "draft"
        assert campaign.body["live"] is False

    async def test_save_changes_keeps_a_live_campaign_live_and_keeps_hidden_fields(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        created = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/create",
            headers=ios_app.headers(),
            json={
                "name": "From the API",
                "live": True,
                "push_time": "2031-03-01T09:00:00",
                "messages": [{"language": "en", "body": "Hi"}],
                "labels": ["crm"],
            },
        )
        token = created.json()["campaign_token"]
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
        login.use(api)
        path = f"/dashboard/apps/{ios_app.app_id}/campaigns/{token}"
        editor = (await api.get(path)).text
        # On a live campaign, the first button (what Enter does) keeps it live.
        assert editor.index('value="keep"') < editor.index('value="stop"')
        assert 'value="draft"' not in editor
        fields = {**campaign_fields(name="Renamed", action="keep"), "csrf_token": login.csrf}
        saved = await api.post(path, data=fields)
        assert saved.status_code == 303
        campaign = await stored_campaign(runtime, ios_app)
        assert (campaign.name, campaign.state) == ("Renamed", "scheduled")
        assert campaign.body["live"] is True
        assert campaign.body["labels"] == ["crm"]  # not in the editor, kept as stored

    async def test_an_empty_vapid_key_field_keeps_the_key(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=web_app.app_id, role=Role.ADMIN)
        login.use(api)
        before = (await api.get(f"/sdk/v1/{web_app.api_key}/webpush/vapid-key")).json()
        page = await api.post(
            f"/dashboard/apps/{web_app.app_id}/credentials",
            data={"csrf_token": login.csrf, "subject": "mailto:ops@example.com", "private_key": ""},
        )
        assert page.status_code == 200, page.text
        assert "Credentials saved." in page.text
        after = (await api.get(f"/sdk/v1/{web_app.api_key}/webpush/vapid-key")).json()
        assert after == before

    async def test_unknown_pages_are_html_and_static_files_still_load(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)
        missing = await api.get("/dashboard/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("text/html")
        assert "no page /dashboard/nope" in missing.text
        bare = await api.get("/dashboard")  # answered itself: no redirect
        assert bare.status_code == 200
        assert bare.headers["content-type"].startswith("text/html")
        script = await api.get("/dashboard/static/app.js")
        assert script.status_code == 200
        assert "fetchFragment" in script.text

    async def test_a_post_after_the_session_expired_returns_home_after_sign_in(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        api.cookies.clear()
        answer = await api.post(f"/dashboard/apps/{ios_app.app_id}/keys/rotate")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/dashboard/login?next=/dashboard/"


class TestAnalytics:
    async def test_last_errors_and_group_reports_come_from_the_push_log(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        now = utcnow()

        def event(kind: PushEventKind, minutes_ago: int, **fields: Any) -> Any:
            return push_event_row(
                app_id=ios_app.app_id,
                kind=kind,
                platform="ios",
                occurred_at=now - timedelta(minutes=minutes_ago),
                **fields,
            )

        welcome = {"group_id": "welcome", "send_token": "tx-welcome"}
        rows = [event(PushEventKind.SENT, 60 + n, install_id=f"i{n}", **welcome) for n in range(30)]
        rows += [
            event(PushEventKind.ERROR, 50, reason="TopicDisallowed", **welcome),
            event(PushEventKind.TOKEN_DELETED, 40, reason="Unregistered", **welcome),
            event(PushEventKind.OPENED, 30, install_id="i1", **welcome),
            # Older than the 30 days the error list looks back: not shown.
            event(PushEventKind.ERROR, 60 * 24 * 40, reason="TooOld", **welcome),
            event(PushEventKind.SENT, 10, group_id="other", install_id="j0", send_token="tx-o"),
        ]
        # App opens after a send reached the install, without a direct open: influenced (i0,
        # i3 twice, and j0 for the other group). i1 opened the notification itself; i2 opened
        # the app before its send.
        opens = [("i0", 20), ("i1", 25), ("i2", 120), ("i3", 30), ("i3", 15), ("j0", 5)]
        async with transaction(runtime.sessions) as session:
            await record_push_events(session, rows)
            await record_tracked_events(
                session,
                [
                    {
                        "app_id": ios_app.app_id,
                        "install_id": install,
                        "name": APP_OPEN_EVENT,
                        "occurred_at": now - timedelta(minutes=minutes_ago),
                    }
                    for install, minutes_ago in opens
                ],
            )
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)

        table = await api.get(f"/dashboard/apps/{ios_app.app_id}/analytics?days=7")

        def cells_of(group_id: str) -> list[str]:
            row = re.search(rf">{group_id}</a></td>(.*?)</tr>", table.text)
            assert row is not None
            return re.findall(r'<td class="num">([^<]*)</td>', row.group(1))

        # sent, direct opens, influenced opens, open rate (direct), errors
        assert cells_of("welcome") == ["30", "1", "2", "3.3 %", "2"]
        assert cells_of("other") == ["1", "0", "1", "0.0 %", "0"]
        assert table.text.index(">welcome<") < table.text.index(">other<")  # most sent first

        group = await api.get(f"/dashboard/apps/{ios_app.app_id}/analytics/groups/welcome")
        assert group.status_code == 200
        reasons = re.findall(r"<td>(TopicDisallowed|Unregistered|TooOld)</td>", group.text)
        assert reasons == ["Unregistered", "TopicDisallowed"]  # newest first, within 30 days
        assert re.search(r"<b>2</b><span>influenced opens</span>", group.text)


async def user_ids(runtime: Runtime, *emails: str) -> dict[str, int]:
    async with runtime.sessions() as session:
        found = await session.execute(
            select(DashboardUser.email, DashboardUser.id).where(DashboardUser.email.in_(emails))
        )
        return dict(found.all())


class TestSignInThrottle:
    """Failed sign-ins are counted per (e-mail, client address) and per client address, never
    per e-mail alone: nobody can lock an account out from their own address."""

    async def test_failures_at_one_address_lock_that_address_out_of_that_account(
        self, clarion_app: FastAPI, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        statuses = []
        async with client_at(clarion_app, new_client_address()) as client:
            for password in ["wrong password!"] * service.SIGN_IN_LIMIT + [PASSWORD]:
                answer = await form_sign_in(client, login.email, password)
                statuses.append(answer.status_code)
        # Ten failures, then even the right password waits, at that address.
        assert statuses == [401] * service.SIGN_IN_LIMIT + [429]
        assert "Too many failed sign-ins for this e-mail from your address" in answer.text

    async def test_a_guesser_elsewhere_does_not_lock_the_admin_out(
        self, clarion_app: FastAPI, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        admin = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        async with client_at(clarion_app, new_client_address()) as attacker:
            statuses = [
                (await form_sign_in(attacker, admin.email, f"guess {n}")).status_code
                for n in range(service.SIGN_IN_LIMIT + 2)
            ]
            assert statuses == [401] * service.SIGN_IN_LIMIT + [429, 429]
            async with client_at(clarion_app, new_client_address()) as owner:
                signed = await form_sign_in(owner, admin.email, PASSWORD)
                assert signed.status_code == 303
                assert (await owner.get("/dashboard/")).status_code == 200
            # The owner's success forgave only the owner's address: the guesser still waits.
            assert (await form_sign_in(attacker, admin.email, PASSWORD)).status_code == 429

    async def test_tries_sent_at_once_get_no_more_answers_than_the_limit(
        self, clarion_app: FastAPI, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        async with client_at(clarion_app, new_client_address()) as client:
            form = await client.get("/dashboard/login")
            fields = {"email": login.email, "csrf_token": hidden(form.text, "csrf_token")}
            answers = await asyncio.gather(
                *(
                    client.post("/dashboard/login", data={**fields, "password": f"guess {n}"})
                    for n in range(3 * service.SIGN_IN_LIMIT)
                )
            )
        statuses = Counter(answer.status_code for answer in answers)
        assert set(statuses) == {401, 429}
        # Argon2 checks two passwords at a time: those two may both be past the limit.
        assert statuses[401] <= service.SIGN_IN_LIMIT + 2, statuses

    async def test_an_ipv6_client_is_one_client_across_its_64(
        self, clarion_app: FastAPI, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        network = f"2001:db8:{secrets.randbelow(1 << 16):x}:{secrets.randbelow(1 << 16):x}"
        statuses = []
        for n in range(service.SIGN_IN_LIMIT + 1):  # a new address of the /64 for every try
            async with client_at(clarion_app, f"{network}::{n + 1:x}") as client:
                statuses.append((await form_sign_in(client, login.email, "wrong!")).status_code)
        assert statuses == [401] * service.SIGN_IN_LIMIT + [429]

    async def test_one_address_spraying_many_emails_is_throttled(
        self, clarion_app: FastAPI, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        async with client_at(clarion_app, new_client_address()) as sprayer:
            # Two passwords on each of 15 e-mails: never more than 2 per e-mail.
            statuses = [
                (await form_sign_in(sprayer, f"person{n // 2}@example.com", f"pw{n % 2}"))
                for n in range(service.SIGN_IN_CLIENT_LIMIT)
            ]
            assert [answer.status_code for answer in statuses] == [401] * len(statuses)
            # The next try from that address waits, whatever the e-mail and password,
            refused = await form_sign_in(sprayer, login.email, PASSWORD)
            assert refused.status_code == 429
            assert "Too many failed sign-ins from your address" in refused.text
        # and other addresses are not concerned.
        async with client_at(clarion_app, new_client_address()) as other:
            assert (await form_sign_in(other, login.email, PASSWORD)).status_code == 303

    async def test_failed_sign_ins_count_across_processes_and_age_out(
        self, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        address = new_client_address()
        started = utcnow()
        # Another dashboard process fails ten times for this e-mail and address...
        other_process = (
            "import asyncio, sys\n"
            "from datetime import datetime\n"
            "from clarion.dashboard import service\n"
            "from clarion.db import create_engine, create_sessionmaker, transaction\n"
            "from clarion.errors import ClarionError\n"
            "async def main():\n"
            "    engine = create_engine(sys.argv[1])\n"
            "    for _ in range(10):\n"
            "        async with transaction(create_sessionmaker(engine)) as session:\n"
            "            try:\n"  # as the route does: the error is a page, the failure commits
            "                at = datetime.fromisoformat(sys.argv[3])\n"
            "                await service.sign_in(\n"
            "                    session, email=sys.argv[2], password='wrong password!',\n"
            "                    client=sys.argv[4], now=at,\n"
            "                )\n"
            "            except ClarionError as exc:\n"
            "                print(exc.status)\n"
            "    await engine.dispose()\n"
            "asyncio.run(main())\n"
        )
        answers = subprocess.run(
            [
                sys.executable,
                "-c",
                other_process,
                runtime.settings.resolved_database_url,
                login.email,
                started.isoformat(),
                address,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.split()
        assert answers == ["401"] * 10

        async def sign_in(at: datetime) -> None:
            async with transaction(runtime.sessions) as session:
                await service.sign_in(
                    session, email=login.email, password=PASSWORD, client=address, now=at
                )

        # ... so this one refuses even the right password from that address,
        with pytest.raises(ClarionError) as refused:
            await sign_in(started + timedelta(minutes=1))
        assert refused.value.status == 429
        # until the failures are older than the window.
        await sign_in(started + service.SIGN_IN_WINDOW + timedelta(seconds=1))

    async def test_behind_a_trusted_proxy_each_forwarded_address_counts_alone(
        self, clarion_app: FastAPI, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        """As `clarion serve` runs: uvicorn takes the client from X-Forwarded-For when the peer
        is a trusted proxy (FORWARDED_ALLOW_IPS, by default 127.0.0.1 and ::1), and ignores the
        header from anyone else."""
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        served = ProxyHeadersMiddleware(clarion_app, trusted_hosts="127.0.0.1,::1")  # type: ignore[arg-type]
        guesser = {"X-Forwarded-For": new_client_address()}
        owner = {"X-Forwarded-For": new_client_address()}
        async with client_at(served, "127.0.0.1", guesser) as proxy:
            statuses = [
                (await form_sign_in(proxy, login.email, "wrong!")).status_code
                for _ in range(service.SIGN_IN_LIMIT + 1)
            ]
        assert statuses == [401] * service.SIGN_IN_LIMIT + [429]
        async with client_at(served, "127.0.0.1", owner) as proxy:
            assert (await form_sign_in(proxy, login.email, PASSWORD)).status_code == 303
        # A peer that is not a trusted proxy cannot pass for new addresses with the header.
        direct = new_client_address()
        statuses = []
        for _ in range(service.SIGN_IN_LIMIT + 1):
            forged = {"X-Forwarded-For": new_client_address()}
            async with client_at(served, direct, forged) as client:
                statuses.append((await form_sign_in(client, login.email, "wrong!")).status_code)
        assert statuses == [401] * service.SIGN_IN_LIMIT + [429]

    def test_clients_are_counted_by_address_and_ipv6_by_64(self) -> None:
        assert service.client_address("203.0.113.7") == "203.0.113.7"
        assert service.client_address("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
        assert service.client_address("::ffff:203.0.113.7") == "203.0.113.7"
        assert service.client_address(None) == "unknown"
        assert service.client_address("x" * 300) == "x" * 64

    async def test_an_email_no_account_can_have_is_an_unknown_one(
        self, clarion_app: FastAPI
    ) -> None:
        async with client_at(clarion_app, new_client_address()) as client:
            for email in ("a" * 300 + "@example.com", "nul\x00@example.com"):
                answer = await form_sign_in(client, email, "whatever password")
                assert answer.status_code == 401
                assert "Wrong e-mail or password." in answer.text
