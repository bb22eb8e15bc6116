"""The dashboard's in-app pages over HTTP (no browser): the editor's form read with the In-App
Campaigns API's rules (nothing saved on a refused field), the list, the statistics from the
in-app events SDKs report, and the themes. The preview is tested in Chromium
(test_dashboard_e2e.py)."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clarion.dashboard.models import Role
from clarion.inapp.models import InAppCampaign, InAppTheme
from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.support.dashboard import DashboardLogin, sign_in_as

pytestmark = pytest.mark.usefixtures("api")

BLANK_CTA = {"cta_label": "", "cta_action": "continue", "cta_link": ""}


def inapp_fields(**changes: Any) -> dict[str, Any]:
    """The editor's form: one message (French), two of its four button slots used."""
    fields: dict[str, Any] = {
        "name": "Welcome offer",
        "live": "1",
        "labels": "onboarding, promo",
        "start_kind": "local",
        "start": "2031-03-01T09:00",
        "end_kind": "utc",
        "end": "2031-04-01T00:00",
        "trigger_when": "EVENT",
        "trigger_event": "e.purchase",
        "trigger_label": "shoes",
        "capping": "3",
        "grace_every": "2",
        "grace_unit": "DAYS",
        "theme": "default",
        "image": "https://cdn.example.com/offer.png",
        "image_description": "",
        "content_version": [""],
        "content_language": ["fr"],
        "content_header": ["Offre"],
        "content_title": ["Bienvenue"],
        "content_body": ["-20 % sur tout"],
        "cta_label": ["Voir", "Plus tard", "", ""],
        "cta_action": ["deeplink", "dismiss", "continue", "continue"],
        "cta_link": ["myapp://offers/42", "", "", ""],
        "deeplink": "",
        "custom_payload": '{"offer": 42}',
        "languages": "fr, be",
        "segments": ["ENGAGED"],
    }
    fields.update(changes)
    return fields


EXPECTED_BODY = {
    "name": "Welcome offer",
    "live": True,
    "labels": ["onboarding", "promo"],
    "local_start_date": "2031-03-01T09:00:00",
    "end_date": "2031-04-01T00:00:00",
    "trigger": {
        "when": "EVENT",
        "event": "e.purchase",
        "label": "shoes",
        "capping": 3,
        "grace_period": {"every": 2, "unit": "DAYS"},
    },
    "targeting": {"segments": ["ENGAGED"], "languages": ["fr", "be"]},
    "landing": {
        "theme": "default",
        "image": "https://cdn.example.com/offer.png",
        "contents": [
            {
                "language": "fr",
                "header": "Offre",
                "title": "Bienvenue",
                "body": "-20 % sur tout",
                "actions": [
                    {"label": "Voir", "action": "deeplink", "args": {"l": "myapp://offers/42"}},
                    {"label": "Plus tard", "action": "dismiss"},
                ],
            }
        ],
    },
    "custom_payload": '{"offer": 42}',
}


def text(response: httpx.Response) -> str:
    return html.unescape(response.text)


async def editor(runtime: Runtime, api: httpx.AsyncClient, app: ClientApp) -> DashboardLogin:
    login = await sign_in_as(runtime, app_id=app.app_id, role=Role.EDITOR)
    login.use(api)
    return login


async def stored_campaigns(runtime: Runtime, app: ClientApp) -> list[InAppCampaign]:
    async with runtime.sessions() as session:
        found = await session.scalars(
            select(InAppCampaign)
            .where(InAppCampaign.app_id == app.app_id)
            .order_by(InAppCampaign.id)
        )
        return list(found)


async def create(
    api: httpx.AsyncClient, app: ClientApp, login: DashboardLogin, **changes: Any
) -> str:
    created = await api.post(
        f"/dashboard/apps/{app.app_id}/inapp",
        data={**inapp_fields(**changes), "csrf_token": login.csrf},
    )
    assert created.status_code == 303, text(created)
    found = re.fullmatch(
        rf"/dashboard/apps/{app.app_id}/inapp/([0-9a-f]{{32}})\?notice=created",
        created.headers["location"],
    )
    assert found is not None, created.headers["location"]
    return found.group(1)


class TestEditor:
    async def test_the_form_creates_the_campaign_the_api_would(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await editor(runtime, api, ios_app)
        page = await api.get(f"/dashboard/apps/{ios_app.app_id}/inapp/new")
        assert page.status_code == 200
        assert 'name="content_title"' in page.text
        assert page.text.count('name="cta_label"') == 4 * 2  # the row, and the blank template
        assert "/dashboard/static/inapp-render.js" in page.text
        token = await create(api, ios_app, login)
        [campaign] = await stored_campaigns(runtime, ios_app)
        assert campaign.token == token
        assert (campaign.live, campaign.from_api, campaign.name) == (True, False, "Welcome offer")
        assert campaign.body == EXPECTED_BODY
        # Read back by the API as created by it.
        read = await api.get(
            f"/1.1/{ios_app.api_key}/in-app-campaigns/{token}", headers=ios_app.headers()
        )
        assert read.status_code == 200, read.text
        assert read.json()["landing"] == EXPECTED_BODY["landing"]
        # The editor shows it as typed.
        shown = text(
            await api.get(f"/dashboard/apps/{ios_app.app_id}/inapp/{token}?notice=created")
        )
        for value in ("Bienvenue", "myapp://offers/42", "e.purchase", "2031-03-01T09:00:00"):
            assert f'value="{value}"' in shown, value
        assert "In-app campaign created." in shown

    @pytest.mark.parametrize(
        ("changes", "named"),
        [
            ({"image": "http://cdn.example.com/offer.png"}, "landing.image"),
            ({"trigger_event": ""}, "event is required"),
            ({"trigger_event": "purchase"}, "trigger.event"),
            ({"capping": "many"}, "trigger.capping"),
            ({"theme": "ghost"}, "landing.theme"),
            ({"cta_link": ["", "", "", ""]}, "landing.contents.0.actions.0"),
            ({"custom_payload": "[1]"}, "custom_payload"),
            ({"end": "2031-02-01T00:00", "end_kind": "local"}, "end date is not after"),
            ({"content_header": [""], "content_title": [""], "content_body": [""],
              "cta_label": ["", "", "", ""], "cta_link": ["", "", "", ""], "image": ""},
             "landing.contents"),
        ],
    )  # fmt: skip
    async def test_a_refused_field_is_named_and_nothing_is_saved(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        changes: dict[str, Any],
        named: str,
    ) -> None:
        login = await editor(runtime, api, ios_app)
        refused = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/inapp",
            data={**inapp_fields(**changes), "csrf_token": login.csrf},
        )
        assert refused.status_code == 400
        alert = re.search(r'<p class="error" role="alert">([^<]*)</p>', refused.text)
        assert alert is not None
        assert named in html.unescape(alert.group(1))
        # The form comes back as typed, beside the message.
        assert 'value="Welcome offer"' in refused.text
        assert await stored_campaigns(runtime, ios_app) == []

    async def test_editing_saves_the_whole_form_and_keeps_what_it_does_not_show(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await editor(runtime, api, ios_app)
        # An A/B campaign: its split is set through the API; the editor has no field for it.
        ab = {
            "content_version": ["a", "b"],
            "content_language": ["default", "default"],
            "content_header": ["", ""],
            "content_title": ["Version A", "Version B"],
            "content_body": ["", ""],
            "cta_label": ["OK", "", "", "", "", "", "", ""],
            "cta_action": ["continue"] * 8,
            "cta_link": [""] * 8,
        }
        token = await create(api, ios_app, login, **ab)
        split = await api.post(
            f"/1.1/{ios_app.api_key}/in-app-campaigns/update/{token}",
            headers=ios_app.headers(),
            json={
                "version_split": {"a": 70, "b": 30},
                # Button args beyond the link, set through the API: the editor shows the link.
                "landing": {
                    "contents": [
                        {
                            "version": "a",
                            "title": "Version A",
                            "actions": [
                                {
                                    "label": "OK",
                                    "action": "deeplink",
                                    "args": {"l": "https://example.com/x", "utm": "spring"},
                                }
                            ],
                        },
                        {"version": "b", "title": "Version B"},
                    ]
                },
            },
        )
        assert split.status_code == 200, split.text
        url = f"/dashboard/apps/{ios_app.app_id}/inapp/{token}"
        page = text(await api.get(url))
        assert 'value="Version B"' in page
        changed = {
            **ab,
            "content_title": ["Version A", "Version B, better"],
            "cta_action": ["deeplink"] + ["continue"] * 7,
            "cta_link": ["https://example.com/x"] + [""] * 7,
        }
        saved = await api.post(
            url,
            data={
                **inapp_fields(**changed, live="", trigger_when="NOW", trigger_event=""),
                "csrf_token": login.csrf,
            },
        )
        assert saved.status_code == 303, text(saved)
        assert saved.headers["location"] == f"{url}?notice=saved"
        [campaign] = await stored_campaigns(runtime, ios_app)
        assert campaign.live is False
        assert campaign.body["trigger"] == {
            "when": "NOW",
            "capping": 3,
            "grace_period": {"every": 2, "unit": "DAYS"},
        }
        titles = [content["title"] for content in campaign.body["landing"]["contents"]]
        assert titles == ["Version A", "Version B, better"]
        assert campaign.body["version_split"] == {"a": 70, "b": 30}
        [button] = campaign.body["landing"]["contents"][0]["actions"]
        assert button["args"] == {"l": "https://example.com/x", "utm": "spring"}
        # A refused change leaves the stored campaign as it was.
        refused = await api.post(
            url,
            data={**inapp_fields(**changed, name="x"), "csrf_token": login.csrf},
        )
        assert refused.status_code == 400
        assert "name" in text(refused)
        [after] = await stored_campaigns(runtime, ios_app)
        assert after.body == campaign.body
        # Deleted: gone from the list and the editor.
        deleted = await api.post(f"{url}/delete", data={"csrf_token": login.csrf})
        assert deleted.status_code == 303
        assert (await api.get(url)).status_code == 404

    async def test_a_viewer_reads_but_cannot_create(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        login.use(api)
        page = await api.get(f"/dashboard/apps/{ios_app.app_id}/inapp/new")
        assert page.status_code == 200
        assert "<fieldset disabled" in page.text
        refused = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/inapp",
            data={**inapp_fields(), "csrf_token": login.csrf},
        )
        assert refused.status_code == 403
        assert await stored_campaigns(runtime, ios_app) == []
        # Without the session's CSRF token, not even an editor's form is taken.
        await editor(runtime, api, ios_app)
        forged = await api.post(f"/dashboard/apps/{ios_app.app_id}/inapp", data=inapp_fields())
        assert forged.status_code == 403
        assert "this form expired" in forged.text
        assert await stored_campaigns(runtime, ios_app) == []

    async def test_the_estimate_counts_installations_whether_or_not_they_take_pushes(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        for number, optin in enumerate([True, False, False]):
            registered = await api.put(
                f"/sdk/v1/{ios_app.api_key}/installations/in-{number}",
                json={"push_token": f"{number:064x}", "push_optin": optin, "language": "fr"},
            )
            assert registered.status_code in (200, 201)
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)
        login.use(api)
        url = f"/dashboard/apps/{ios_app.app_id}/estimate"
        headers = {"X-CSRF-Token": login.csrf}
        inapp = await api.post(url, headers=headers, data={"estimate_for": "inapp"})
        assert "<strong>3</strong> installations match" in inapp.text
        push = await api.post(url, headers=headers, data={})
        assert "<strong>1</strong> installations reachable" in push.text


class TestListAndStatistics:
    async def test_the_list_shows_the_apps_campaigns_only(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp, runtime: Runtime
    ) -> None:
        other = await editor(runtime, api, android_app)
        await create(api, android_app, other, name="Another app's")
        login = await editor(runtime, api, ios_app)
        token = await create(api, ios_app, login)
        draft = await create(api, ios_app, login, name="Draft one", live="", trigger_when="NOW")
        page = text(await api.get(f"/dashboard/apps/{ios_app.app_id}/inapp"))
        assert "Another app's" not in page
        row = re.search(
            rf"<tr>\s*<td><a[^>]*/inapp/{token}\">Welcome offer</a>.*?</tr>", page, re.S
        )
        assert row is not None
        expected = [
            "live",
            "2031-03-01T09:00:00 (local)",
            "2031-04-01T00:00:00",
            "event",
            "e.purchase",
            "at most 3",
            "dashboard",
            token,
            f"/inapp/{token}/stats",
        ]
        for shown in expected:
            assert shown in row.group(0), shown
        drafts = text(await api.get(f"/dashboard/apps/{ios_app.app_id}/inapp?state=draft"))
        assert draft in drafts
        assert token not in drafts

    async def test_the_statistics_count_what_sdks_report(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await editor(runtime, api, ios_app)
        token = await create(api, ios_app, login)
        url = f"/dashboard/apps/{ios_app.app_id}/inapp/{token}/stats"
        empty = text(await api.get(url))
        assert "Not supplied to any installation yet." in empty
        events = {
            "one": ["inapp_shown", ("inapp_clicked", 0, "Voir")],
            "two": ["inapp_shown", ("inapp_clicked", 1, "Plus tard")],
            "three": ["inapp_shown", "inapp_closed"],
            "four": ["inapp_shown", ("inapp_clicked", 0, "Voir")],
        }
        for install_id, kinds in events.items():
            registered = await api.put(
                f"/sdk/v1/{ios_app.api_key}/installations/{install_id}", json={"language": "fr"}
            )
            assert registered.status_code in (200, 201)
            reported = []
            for kind in kinds:
                if isinstance(kind, tuple):
                    name, position, label = kind
                    reported.append(
                        {
                            "kind": name,
                            "campaign_id": token,
                            "cta_position": position,
                            "cta_label": label,
                        }
                    )
                else:
                    reported.append({"kind": kind, "campaign_id": token})
            sent = await api.post(
                f"/sdk/v1/{ios_app.api_key}/installations/{install_id}/inapp-events",
                json={"events": reported},
            )
            assert sent.status_code == 202, sent.text
        page = text(await api.get(url))

        def figure(name: str) -> str:
            found = re.search(rf'data-figure="{name}"><b>([^<]*)</b>', page)
            assert found is not None, name
            return found.group(1)

        assert [figure(n) for n in ("shown", "clicked", "closed", "click-rate")] == [
            "4",
            "3",
            "1",
            "75.0 %",
        ]
        assert "Button 1 (Voir)" in page
        assert "Button 2 (Plus tard)" in page
        day = re.search(r'<table class="list" id="inapp-days">.*?<tbody>(.*?)</tbody>', page, re.S)
        assert day is not None
        cells = re.findall(r'<td class="num">([^<]*)</td>', day.group(1))
        # supplied, shown, clicked, closed, click rate, button 1, button 2
        assert cells == ["0", "4", "3", "1", "75.0 %", "2", "1"]


class TestThemes:
    async def test_create_edit_use_and_delete_a_theme(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await editor(runtime, api, ios_app)
        base = f"/dashboard/apps/{ios_app.app_id}/inapp-themes"
        listed = text(await api.get(base))
        assert "built-in, read-only" in listed
        assert f"{base}/default/edit" not in listed
        form = {
            "csrf_token": login.csrf,
            "code": "dark-banner",
            "name": "Dark banner",
            "layout": "banner_bottom",
            "close_button": "none",
            "corner_radius": "4",
            "auto_close_seconds": "8",
            "font_family": "Georgia, serif",
            "font_size": "18",
            "colour_background": "#111827",
            "alpha_background": "100",
            "colour_backdrop": "#000000",
            "alpha_backdrop": "50",
            "colour_title": "#ffffff",
            "alpha_title": "100",
        }
        created = await api.post(base, data=form)
        assert created.status_code == 303, text(created)
        async with runtime.sessions() as session:
            stored = await session.scalar(
                select(InAppTheme).where(InAppTheme.app_id == ios_app.app_id)
            )
        assert stored is not None
        assert stored.code == "dark-banner"
        assert stored.body["layout"] == "banner_bottom"
        assert stored.body["font"] == {"family": "Georgia, serif", "size": 18}
        assert stored.body["colours"]["backdrop"] == "#00000080"
        assert stored.body["colours"]["background"] == "#111827"
        assert (stored.body["close_button"], stored.body["auto_close_seconds"]) == ("none", 8)
        # The editor shows the colour and its opacity apart.
        edit = text(await api.get(f"{base}/dark-banner/edit"))
        assert 'name="colour_backdrop" value="#000000"' in edit
        assert 'name="alpha_backdrop" min="0" max="100" value="50"' in edit
        # A code the app has is refused; so are bad fields, naming them; nothing changes.
        again = await api.post(base, data={**form, "name": "Copy"})
        assert again.status_code == 400
        assert "code: this app already has a theme 'dark-banner'" in text(again)
        for bad, named in [
            ({"font_size": "99"}, "font.size"),
            ({"alpha_backdrop": "150"}, "colours.backdrop"),
            ({"layout": "sideways"}, "layout"),
            ({"colour_text": "#zzzzzzzz"}, "colours.text"),
        ]:
            refused = await api.post(f"{base}/dark-banner/edit", data={**form, **bad})
            assert refused.status_code == 400
            assert named in text(refused)
        builtin = await api.post(f"{base}/default/edit", data={**form, "code": "default"})
        assert builtin.status_code == 400
        # Changed.
        saved = await api.post(f"{base}/dark-banner/edit", data={**form, "name": "Night"})
        assert saved.status_code == 303
        assert "Night" in text(await api.get(base))
        # A campaign draws with it: the editor offers it.
        page = text(await api.get(f"/dashboard/apps/{ios_app.app_id}/inapp/new"))
        assert '<option value="dark-banner"' in page
        assert '"dark-banner": {"auto_close_seconds": 8' in page.replace("&#34;", '"')
        # Refused while a live campaign draws with it; a draft does not hold it.
        token = await create(api, ios_app, login, theme="dark-banner")
        held = await api.post(f"{base}/dark-banner/delete", data={"csrf_token": login.csrf})
        assert held.status_code == 400
        assert "Welcome offer" in text(held)
        assert "Night" in text(held)  # the list, with the refusal
        await api.post(
            f"/dashboard/apps/{ios_app.app_id}/inapp/{token}",
            data={**inapp_fields(theme="dark-banner", live=""), "csrf_token": login.csrf},
        )
        # Deleted (the campaign using it is a draft).
        deleted = await api.post(f"{base}/dark-banner/delete", data={"csrf_token": login.csrf})
        assert deleted.status_code == 303, text(deleted)
        async with runtime.sessions() as session:
            left = await session.scalar(
                select(func.count())
                .select_from(InAppTheme)
                .where(InAppTheme.app_id == ios_app.app_id)
            )
        assert left == 0
        # A code the API would refuse is refused here, with what was typed kept.
        bad = await api.post(base, data={**form, "code": "no spaces"})
        assert bad.status_code == 400
        assert "code" in text(bad)
        assert 'value="Night"' not in text(bad)
        assert 'value="Dark banner"' in text(bad)


async def test_the_statistics_of_an_ab_campaign_show_each_version(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    login = await editor(runtime, api, ios_app)
    token = await create(
        api,
        ios_app,
        login,
        content_version=["a", "b"],
        content_language=["default", "default"],
        content_header=["", ""],
        content_title=["A", "B"],
        content_body=["", ""],
        cta_label=["OK", "", "", "", "Go", "", "", ""],
        cta_action=["continue"] * 8,
        cta_link=[""] * 8,
    )
    for install_id, version in (("ab-1", "a"), ("ab-2", "b"), ("ab-3", "b")):
        registered = await api.put(
            f"/sdk/v1/{ios_app.api_key}/installations/{install_id}", json={"language": "en"}
        )
        assert registered.status_code in (200, 201)
        sent = await api.post(
            f"/sdk/v1/{ios_app.api_key}/installations/{install_id}/inapp-events",
            json={"events": [{"kind": "inapp_shown", "campaign_id": token, "version": version}]},
        )
        assert sent.status_code == 202, sent.text
    page = text(await api.get(f"/dashboard/apps/{ios_app.app_id}/inapp/{token}/stats"))
    rows = re.findall(r'<tr class="version"><td>[^<]*· version (\w)</td>(.*?)</tr>', page, re.S)
    shown = {
        version: re.findall(r'<td class="num">([^<]*)</td>', cells)[1] for version, cells in rows
    }
    assert shown == {"a": "1", "b": "2"}
