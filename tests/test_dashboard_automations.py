"""The dashboard's automations over HTTP (no browser): the editor's form read with the Campaigns
API's rules (and a refusal shown beside its field), the list, the automation's page with its
figures and newest entries, pause, resume and delete cancelling pending entries. The browser
test is in test_dashboard_e2e.py."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clarion.automations.models import AutomationEntry
from clarion.campaigns.models import Campaign
from clarion.dashboard.models import Role
from clarion.db import utcnow
from clarion.runtime import Runtime
from tests.automations.test_api import AUTOMATION
from tests.automations.test_stats import HOUR, campaign_id_of, entry, events, seed
from tests.conftest import ClientApp
from tests.support.dashboard import sign_in_as
from tests.test_campaigns import created, get

pytestmark = pytest.mark.usefixtures("api")


def automation_fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "Abandoned cart",
        "labels": "reminders",
        "trigger_event": "ue.added_to_cart",
        "trigger_label": "",
        "cond_name": ["category", "price"],
        "cond_value": ["shoes", "18"],
        "delay_value": "2",
        "delay_unit": "hours",
        "at_local_time": "18:30",
        "cancel_event": ["ue.purchased", "ue.emptied_cart"],
        "cancel_match": ["sku", ""],
        "entry": "once",
        "once_per_days": "7",
        "quiet_start": "22:00",
        "quiet_end": "08:00",
        "message_version": ["a", "b"],
        "message_language": ["en", "en"],
        "message_title": ["Still there?", ""],
        "message_body": ["Your {{ event.attributes.sku }} is waiting", "Come back"],
        "version_split": "a=50, b=50",
        "q_field": ["b.language"],
        "q_op": ["$eq"],
        "q_value": ["en"],
        "conversion_event": "ue.purchased",
        "conversion_hours": "48",
        "action": "live",
    }
    fields.update(changes)
    return fields


async def stored_automation(runtime: Runtime, app: ClientApp) -> Campaign:
    async with runtime.sessions() as session:
        campaign = await session.scalar(
            select(Campaign).where(Campaign.app_id == app.app_id).order_by(Campaign.id.desc())
        )
    assert campaign is not None
    return campaign


async def pending_entries(runtime: Runtime, campaign_id: int) -> int:
    async with runtime.sessions() as session:
        count = await session.scalar(
            select(func.count()).where(
                AutomationEntry.campaign_id == campaign_id, AutomationEntry.state == "pending"
            )
        )
    return int(count or 0)


async def test_an_automation_from_the_form_is_what_the_api_reads(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
    login.use(api)
    base = f"/dashboard/apps/{ios_app.app_id}"
    saved = await api.post(
        f"{base}/automations", data={**automation_fields(), "csrf_token": login.csrf}
    )
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"].endswith("?notice=live")
    token = saved.headers["location"].split("/")[-1].split("?")[0]
    body = (await get(api, ios_app, token)).json()
    assert body["state"] == "active"
    assert body["from_api"] is False
    assert body["labels"] == ["reminders"]
    assert body["trigger"] == {
        "event": "ue.added_to_cart",
        "attributes": {"category": "shoes", "price": 18},
        "delay_seconds": 7200,
        "at_local_time": "18:30",
        "cancel_events": [
            {"event": "ue.purchased", "match_attribute": "sku"},
            {"event": "ue.emptied_cart"},
        ],
        "once_per_days": 7,
        "quiet_hours": {"start": "22:00", "end": "08:00"},
        "conversion": {"event": "ue.purchased", "within_hours": 48},
    }
    assert body["messages"] == [
        {
            "language": "en",
            "version": "a",
            "title": "Still there?",
            "body": "Your {{ event.attributes.sku }} is waiting",
        },
        {"language": "en", "version": "b", "body": "Come back"},
    ]
    assert body["version_split"] == {"a": 50, "b": 50}
    assert body["targeting"] == {"query": {"b.language": {"$eq": "en"}}}
    # The editor shows it back as it was typed.
    editor = (await api.get(f"{base}/automations/{token}/edit")).text
    for shown in (
        'name="trigger_event" value="ue.added_to_cart"',
        'name="delay_value" inputmode="numeric" value="2"',
        '<option value="hours" selected>',
        'name="cancel_match" value="sku"',
        'name="quiet_start" value="22:00"',
        'value="once" checked',
        'name="once_per_days" inputmode="numeric" value="7"',
        'name="cond_value" value="18"',
        'name="conversion_event" value="ue.purchased"',
        'value="a=50, b=50"',
    ):
        assert shown in editor, shown
    # Listed among the automations, not among the push campaigns.
    listed = (await api.get(f"{base}/automations")).text
    assert "Abandoned cart" in listed
    assert "<code>ue.added_to_cart</code>" in listed
    assert "Abandoned cart" not in (await api.get(f"{base}/campaigns")).text
    # The campaign editor's address leads to the automation's.
    moved = await api.get(f"{base}/campaigns/{token}")
    assert moved.status_code == 303
    assert moved.headers["location"].endswith(f"/automations/{token}/edit")


@pytest.mark.parametrize(
    ("changes", "field", "row", "message"),
    [
        ({"delay_value": "31", "delay_unit": "days"}, "delay_value", None, "delay_seconds"),
        ({"trigger_event": "added_to_cart"}, "trigger_event", None, "trigger.event"),
        ({"quiet_end": ""}, "quiet_end", None, "quiet_hours.end is required"),
        (
            {"cancel_match": ["sku", "Bad-Name"]},
            "cancel_match",
            1,
            "cancel_events.1.match_attribute",
        ),
        ({"message_body": ["", "Come back"]}, "message_body", 0, "messages.0"),
        ({"conversion_hours": "0"}, "conversion_hours", None, "within_hours"),
        ({"entry": "once", "once_per_days": ""}, "once_per_days", None, "once_per_days"),
    ],
)
async def test_bad_input_is_shown_beside_its_field_and_nothing_is_saved(
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    changes: dict[str, Any],
    field: str,
    row: int | None,
    message: str,
) -> None:
    login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
    login.use(api)
    fields = automation_fields(**changes)
    if field == "message_body":  # the first message's title alone: its body is missing
        fields["message_title"] = ["A title only", ""]
    page = await api.post(
        f"/dashboard/apps/{ios_app.app_id}/automations", data={**fields, "csrf_token": login.csrf}
    )
    assert page.status_code == 400
    text = page.text.replace("&#39;", "'")
    # The field (of its row) is marked, and the message follows it, not at the top of the page.
    marked = re.findall(rf'name="{field}"[^>]*aria-invalid="true"[^>]*>', text)
    assert len(marked) == 1, marked
    fields_of_name = re.findall(rf'name="{field}"[^>]*>', text)
    assert fields_of_name.index(marked[0]) == (row or 0)
    refusal = re.search(r'<p class="error full" id="refusal" role="alert">([^<]*)</p>', text)
    assert refusal is not None
    assert message in refusal.group(1)
    assert text.index(marked[0]) < text.index('id="refusal"')
    assert text.count('role="alert"') == 1  # not repeated above the form
    async with runtime.sessions() as session:
        count = await session.scalar(select(func.count()).where(Campaign.app_id == ios_app.app_id))
    assert count == 0
    assert 'value="Abandoned cart"' in text  # what was typed comes back


async def test_the_page_shows_figures_and_pages_through_the_newest_entries(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await created(api, ios_app, AUTOMATION)
    campaign = await campaign_id_of(runtime, token)
    now = utcnow()
    app = ios_app.app_id
    await seed(
        runtime,
        [entry(campaign, app, "sent", user=f"s-{n}", finished=now - HOUR) for n in range(26)]
        + [
            entry(campaign, app, "cancelled", user="c-1", reason="ue.purchased", finished=now),
            entry(campaign, app, "skipped", user="k-1", reason="cap:automations", finished=now),
            entry(campaign, app, "pending", user="p-1", finished=now + HOUR),
        ],
    )
    await events(runtime, ios_app, [("ue.purchased", "s-3", now - timedelta(minutes=30))])
    login = await sign_in_as(runtime, app_id=app, role=Role.VIEWER)
    login.use(api)
    page = await api.get(f"/dashboard/apps/{app}/automations/{token}")
    assert page.status_code == 200, page.text
    text = page.text

    def figure(name: str) -> str:
        found = re.search(rf'data-figure="{name}"><b>([^<]*)</b>', text)
        assert found is not None, name
        return found.group(1)

    assert (figure("entries"), figure("pending"), figure("sent")) == ("29", "1", "26")
    assert (figure("cancelled"), figure("skipped"), figure("conversions")) == ("1", "1", "1")
    assert "<code>cap:automations</code>" in text
    # 25 of the 29 entries, newest first; the next page goes on from the 25th.
    table = text[text.index('id="entries"') :]
    assert table.count('<span class="pill ') == 25
    assert table.index(">p-1<") < table.index(">s-25<")
    older = re.search(r'href="\?days=7&before=(\d+)">Older', text)
    assert older is not None
    rest = (
        await api.get(f"/dashboard/apps/{app}/automations/{token}?before={older.group(1)}")
    ).text
    rest_table = rest[rest.index('id="entries"') :]
    assert rest_table.count('<span class="pill ') == 4
    assert ">s-0<" in rest_table
    assert "Older" not in rest_table
    # A viewer sees no button that changes it.
    assert "Pause" not in text
    refused = await api.post(
        f"/dashboard/apps/{app}/automations/{token}/live",
        data={"csrf_token": login.csrf, "live": "false"},
    )
    assert refused.status_code == 403


async def test_pause_resume_and_delete_cancel_pending_entries(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await created(api, ios_app, AUTOMATION)
    campaign = await campaign_id_of(runtime, token)
    await seed(
        runtime, [entry(campaign, ios_app.app_id, "pending", user=f"p-{n}") for n in range(3)]
    )
    login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.EDITOR)
    login.use(api)
    page = f"/dashboard/apps/{ios_app.app_id}/automations/{token}"
    paused = await api.post(f"{page}/live", data={"csrf_token": login.csrf, "live": "false"})
    assert paused.headers["location"].endswith("notice=paused")
    assert (await stored_automation(runtime, ios_app)).state == "paused"
    assert await pending_entries(runtime, campaign) == 0
    shown = (await api.get(paused.headers["location"])).text
    assert "pending entries are cancelled" in shown
    assert "<code>paused</code>" in shown  # the reason of the cancelled entries
    resumed = await api.post(f"{page}/live", data={"csrf_token": login.csrf, "live": "true"})
    assert resumed.headers["location"].endswith("notice=resumed")
    assert (await stored_automation(runtime, ios_app)).state == "active"
    # Saved from the editor as not live ("Save and pause"): paused, entries cancelled.
    await seed(runtime, [entry(campaign, ios_app.app_id, "pending", user="again")])
    form = automation_fields(action="draft")
    saved = await api.post(f"{page}/edit", data={**form, "csrf_token": login.csrf})
    assert saved.status_code == 303, saved.text
    assert (await stored_automation(runtime, ios_app)).state == "paused"
    assert await pending_entries(runtime, campaign) == 0
    # "Save changes" keeps it as it is (active), its pending entries too.
    resumed = await api.post(f"{page}/live", data={"csrf_token": login.csrf, "live": "true"})
    await seed(runtime, [entry(campaign, ios_app.app_id, "pending", user="last")])
    kept = await api.post(
        f"{page}/edit", data={**automation_fields(action="keep"), "csrf_token": login.csrf}
    )
    assert kept.status_code == 303
    assert (await stored_automation(runtime, ios_app)).state == "active"
    assert await pending_entries(runtime, campaign) == 1
    deleted = await api.post(f"{page}/delete", data={"csrf_token": login.csrf})
    assert deleted.status_code == 303
    assert await pending_entries(runtime, campaign) == 0
    assert (await api.get(page)).status_code == 404
