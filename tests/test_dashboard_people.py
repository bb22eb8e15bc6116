"""Dashboard, Users: a user looked up by custom id or install id, with installs, profile,
custom audiences, recent events and pushes. Data arrives through the public APIs."""

from __future__ import annotations

import re
import secrets
from typing import Any

import httpx
import pytest

from clarion.dashboard import people
from clarion.dashboard.models import Role
from clarion.delivery.providers.webpush import endpoint_origin
from clarion.runtime import Runtime
from tests.conftest import ClientApp, new_app
from tests.support.dashboard import sign_in_as
from tests.test_custom_audiences import put as put_audience
from tests.test_delivery import transactional, wait_for_send

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


async def register(
    api: httpx.AsyncClient,
    app: ClientApp,
    install_id: str,
    *,
    key: str | None = None,
    **fields: Any,
) -> None:
    response = await api.put(
        f"/sdk/v1/{key or app.api_key}/installations/{install_id}", json=fields
    )
    assert response.status_code == 200, response.text


async def track(api: httpx.AsyncClient, app: ClientApp, install_id: str, *events: Any) -> None:
    response = await api.post(
        f"/sdk/v1/{app.api_key}/installations/{install_id}/events", json={"events": list(events)}
    )
    assert response.status_code == 202, response.text


async def set_profile(
    api: httpx.AsyncClient, app: ClientApp, custom_id: str, values: dict[str, Any]
) -> None:
    response = await api.post(
        f"/1.0/{app.api_key}/data/users/{custom_id}",
        headers=app.headers(),
        json={"overwrite": False, "values": values},
    )
    assert response.status_code == 200, response.text


async def page(api: httpx.AsyncClient, app: ClientApp, **params: str) -> tuple[int, str]:
    response = await api.get(f"/dashboard/apps/{app.app_id}/people", params=params)
    return response.status_code, response.text


def section(html: str, title_id: str) -> str:
    """The text of one card of the profile (from its heading to the card's end)."""
    start = html.index(f'id="{title_id}"')
    return html[start : html.index("</section>", start)]


@pytest.fixture
async def alice(api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime) -> ClientApp:
    """A user with two installs (one a dev build), a profile, audiences, events and pushes; and
    a stranger beside her."""
    await register(
        api,
        ios_app,
        "alice-phone",
        custom_id="alice",
        push_token="a1b2c3d4" + "0" * 50 + "e5f6a7",
        push_optin=True,
        advertising_id="AD-ALICE-1",
        language="fr",
        region="FR",
        timezone="Europe/Paris",
        app_version="2.3.1",
        os_version="17.4",
        device_model="iPhone15,2",
    )
    await register(
        api, ios_app, "alice-tablet", key=ios_app.dev_api_key, custom_id="alice", os_version="16.1"
    )
    await register(api, ios_app, "stranger", custom_id="bob", push_optin=True)
    await set_profile(
        api,
        ios_app,
        "alice",
        {
            "u.nickname": SCRIPT,
            "u.level": 42,
            "u.is_subscribed": True,
            "ut.hobbies": ["chess", "climbing"],
        },
    )
    await set_profile(api, ios_app, "bob", {"u.nickname": "Bobby"})
    await put_audience(api, ios_app, "vip", {"type": "custom_ids", "ids": ["alice", "carol"]})
    await put_audience(api, ios_app, "testers", {"ids": [{"id": "alice-tablet"}]}, version="1.1")
    await put_audience(api, ios_app, "ads", {"type": "advertising_ids", "ids": ["AD-ALICE-1"]})
    await put_audience(api, ios_app, "bobs", {"type": "custom_ids", "ids": ["bob"]})
    # Alice was in "former" only until it was replaced: not a member any more.
    await put_audience(api, ios_app, "former", {"type": "custom_ids", "ids": ["alice"]})
    await put_audience(api, ios_app, "former", {"type": "custom_ids", "ids": ["dave"]})
    await track(
        api,
        ios_app,
        "alice-phone",
        {"name": "add_to_cart", "label": SCRIPT, "occurred_at": "2026-01-02T03:04:05Z"},
    )
    await track(api, ios_app, "alice-tablet", {"name": "level_up", "attributes": {"level": 7}})
    await track(api, ios_app, "stranger", {"name": "bob_only"})
    response = await api.post(
        f"/1.0/{ios_app.api_key}/events/users/alice",
        headers=ios_app.headers(),
        json={"events": [{"name": "ue.renewed", "label": "yearly"}]},
    )
    assert response.status_code == 202, response.text
    send = await transactional(
        api, ios_app, group_id="welcome", recipients={"custom_ids": ["alice"]}
    )
    await wait_for_send(api, ios_app, send)
    opened = await api.post(
        f"/sdk/v1/{ios_app.api_key}/installations/alice-phone/opens", json={"send_id": send}
    )
    assert opened.status_code == 202, opened.text
    return ios_app


class TestLookup:
    async def test_without_a_query_only_the_search_form(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)
        status, html = await page(api, ios_app)
        assert status == 200
        assert '<label for="people-q">' in html
        assert '<label for="people-by">' in html
        assert '<option value="install_id"' in html
        assert 'aria-current="page">Users</a>' in html
        assert "Installations" not in html
        assert "No user found" not in html

    @pytest.mark.parametrize("role", [Role.VIEWER, Role.EDITOR, Role.ADMIN])
    async def test_by_custom_id_shows_everything_known_of_the_user(
        self, api: httpx.AsyncClient, alice: ClientApp, runtime: Runtime, role: Role
    ) -> None:
        (await sign_in_as(runtime, app_id=alice.app_id, role=role)).use(api)
        status, html = await page(api, alice, q="alice", by="custom_id")
        assert status == 200, html

        installs = section(html, "installs-title")
        assert "alice-phone" in installs
        assert "alice-tablet" in installs
        assert "stranger" not in installs
        assert "a1b2c3d4…e5f6a7" in installs  # the token shortened
        assert "0" * 50 not in installs
        for value in ("Europe/Paris", "2.3.1", "17.4", "16.1", "iPhone15,2", "opted in"):
            assert value in installs
        assert ">dev<" in installs  # the tablet registered with the Dev key

        data = section(html, "data-title")
        assert "u.nickname" in data
        assert "u.level" in data
        assert ">42<" in data
        assert ">true<" in data
        assert "ut.hobbies" in data
        assert "chess" in data
        assert "climbing" in data
        assert "Bobby" not in data

        audiences = section(html, "audiences-title")
        assert re.findall(r'<th scope="row">([^<]+)', audiences) == ["ads", "testers", "vip"]

        events = section(html, "events-title")
        assert re.findall(r"<code>([a-z_.]+)</code>", events) == [
            "ue.renewed",
            "level_up",
            "add_to_cart",
        ]  # newest first: add_to_cart happened in January
        assert "bob_only" not in events
        assert "yearly" in events
        assert "&#34;level&#34;:7" in events

        pushes = section(html, "pushes-title")
        assert "opened" in pushes
        assert "sent" in pushes
        assert "group <code>welcome</code>" in pushes

    async def test_by_install_id_finds_the_same_user_and_her_other_installs(
        self, api: httpx.AsyncClient, alice: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=alice.app_id, role=Role.VIEWER)).use(api)
        status, html = await page(api, alice, q="alice-tablet", by="install_id")
        assert status == 200, html
        assert "Custom user id <code>alice</code>" in html
        installs = section(html, "installs-title")
        assert installs.index("alice-tablet") < installs.index("alice-phone")  # searched first
        assert "u.nickname" in section(html, "data-title")
        assert re.findall(r'<th scope="row">([^<]+)', section(html, "audiences-title")) == [
            "ads",
            "testers",
            "vip",
        ]
        assert "ue.renewed" in section(html, "events-title")
        assert '<option value="install_id" selected>' in html

    async def test_an_install_without_custom_id(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await register(api, ios_app, "anonymous", push_optin=False)
        await track(api, ios_app, "anonymous", {"name": "browsed"})
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)
        status, html = await page(api, ios_app, q="anonymous", by="install_id")
        assert status == 200, html
        assert "(no custom user id)" in html
        assert "opted out" in section(html, "installs-title")
        assert "browsed" in section(html, "events-title")
        assert "has no custom user id" in section(html, "data-title")

    async def test_a_provider_error_shows_its_reason(
        self, api: httpx.AsyncClient, runtime: Runtime, sim_control: httpx.Client
    ) -> None:
        app = await new_app(runtime, sim_control, "ios", topics=["com.someone.else"])
        await register(
            api,
            app,
            "wrong-topic",
            custom_id="carol",
            push_token=secrets.token_hex(32),
            push_optin=True,
        )
        send = await transactional(api, app, recipients={"custom_ids": ["carol"]})
        await wait_for_send(api, app, send)
        (await sign_in_as(runtime, app_id=app.app_id, role=Role.VIEWER)).use(api)
        _, html = await page(api, app, q="carol")
        pushes = section(html, "pushes-title")
        assert '<span class="pill bad">error</span>' in pushes
        assert "TopicDisallowed" in pushes

    @pytest.mark.parametrize("by", ["custom_id", "install_id"])
    async def test_an_unknown_id_says_no_user_found(
        self, api: httpx.AsyncClient, alice: ClientApp, runtime: Runtime, by: str
    ) -> None:
        (await sign_in_as(runtime, app_id=alice.app_id, role=Role.VIEWER)).use(api)
        status, html = await page(api, alice, q="nobody-at-all", by=by)
        assert status == 200
        assert "No user found" in html
        assert "<code>nobody-at-all</code>" in html
        assert "installs-title" not in html

    async def test_a_user_of_another_app_is_not_found(
        self, api: httpx.AsyncClient, alice: ClientApp, android_app: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=android_app.app_id, role=Role.ADMIN)).use(api)
        _, html = await page(api, android_app, q="alice")
        assert "No user found" in html


class TestSafety:
    async def test_values_are_escaped(
        self, api: httpx.AsyncClient, alice: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=alice.app_id, role=Role.VIEWER)).use(api)
        _, html = await page(api, alice, q="alice")
        assert SCRIPT not in html
        assert ESCAPED in section(html, "data-title")  # the attribute
        assert ESCAPED in section(html, "events-title")  # the event's label
        _, html = await page(api, alice, q=SCRIPT)
        assert SCRIPT not in html
        assert "No user found" in html
        assert ESCAPED in html

    async def test_another_companys_app_is_404(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=android_app.app_id, role=Role.ADMIN)).use(api)
        status, html = await page(api, ios_app, q="alice")
        assert status == 404
        assert "Not found" in html

    async def test_signing_in_is_required(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.get(f"/dashboard/apps/{ios_app.app_id}/people", params={"q": "x"})
        assert response.status_code == 303
        assert response.headers["location"].startswith("/dashboard/login?next=")

    async def test_a_bad_lookup_kind_is_400(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)
        status, _ = await page(api, ios_app, q="x", by="email")
        assert status == 400

    async def test_the_page_has_the_security_headers_and_no_inline_script(
        self, api: httpx.AsyncClient, alice: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=alice.app_id, role=Role.VIEWER)).use(api)
        response = await api.get(f"/dashboard/apps/{alice.app_id}/people", params={"q": "alice"})
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "style=" not in response.text
        assert re.findall(r"<script[^>]*>", response.text) == [
            '<script src="/dashboard/static/app.js" defer>'
        ]


def test_push_addresses_are_shortened() -> None:
    assert people._shortened("0123456789abcdef0123456789") == "01234567…456789"
    assert people._shortened("short") == "short"
    assert endpoint_origin("https://fcm.googleapis.com/fcm/send/abc:def") == (
        "https://fcm.googleapis.com"
    )
