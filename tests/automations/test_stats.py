"""An automation's statistics (clarion.stats.automations): its entries by state and reason over
a period, its conversions, its pushes, its newest entries; and the Campaigns API's stats route
for an automation. Entries and events are written directly: the statistics read rows, whoever
wrote them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from clarion.apps.models import App
from clarion.apps.service import live_access
from clarion.automations.models import AutomationEntry
from clarion.campaigns import service as campaigns
from clarion.campaigns.models import Campaign
from clarion.campaigns.schemas import CampaignStats
from clarion.db import transaction, utcnow
from clarion.events.models import PushEventKind
from clarion.events.service import push_event_row, record_push_events, record_tracked_events
from clarion.runtime import Runtime
from clarion.stats.automations import recent_entries
from clarion.stats.service import campaign_stats
from tests.automations.test_api import AUTOMATION
from tests.conftest import ClientApp
from tests.test_campaigns import created

# Midday, so that an hour either way stays on the same UTC day.
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def entry(
    campaign_id: int,
    app_id: int,
    state: str,
    *,
    user: str | None = None,
    install: str | None = None,
    reason: str | None = None,
    finished: datetime | None = None,
) -> AutomationEntry:
    at = finished or NOW
    return AutomationEntry(
        app_id=app_id,
        campaign_id=campaign_id,
        custom_id=user,
        install_id=install,
        event={"name": "ue.added_to_cart", "attributes": {"sku": "A-1"}},
        entered_at=at - HOUR,
        due_at=at,
        state=state,
        reason=reason,
        finished_at=None if state == "pending" else at,
    )


async def campaign_id_of(runtime: Runtime, token: str) -> int:
    async with runtime.sessions() as session:
        found = await session.scalar(select(Campaign.id).where(Campaign.token == token))
    assert found is not None
    return found


async def seed(runtime: Runtime, rows: list[Any]) -> None:
    async with transaction(runtime.sessions) as session:
        session.add_all(rows)


async def events(runtime: Runtime, app: ClientApp, rows: list[tuple[str, str, datetime]]) -> None:
    """Tracked events: (name as stored, custom id or "install:<id>", when)."""
    await _events(runtime, app.app_id, rows)


async def _events(runtime: Runtime, app_id: int, rows: list[tuple[str, str, datetime]]) -> None:
    async with transaction(runtime.sessions) as session:
        await record_tracked_events(
            session,
            [
                {
                    "app_id": app_id,
                    "name": name,
                    "occurred_at": at,
                    **(
                        {"install_id": who.removeprefix("install:")}
                        if who.startswith("install:")
                        else {"custom_id": who}
                    ),
                }
                for name, who, at in rows
            ],
        )


async def stats_of(
    runtime: Runtime, app: ClientApp, token: str, *, days: int = 30, now: datetime = NOW
) -> CampaignStats:
    async with runtime.sessions() as session:
        found = await session.get_one(App, app.app_id)
        return await campaign_stats(
            session, access=live_access(found), token=token, now=now, automation_days=days
        )


async def test_entries_by_state_and_reason_over_the_period(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await created(api, ios_app, AUTOMATION)
    campaign = await campaign_id_of(runtime, token)
    other = await created(api, ios_app, {**AUTOMATION, "name": "Another one"})
    other_id = await campaign_id_of(runtime, other)
    app = ios_app.app_id
    yesterday = NOW - timedelta(days=1)
    await seed(
        runtime,
        [
            entry(campaign, app, "pending", user="u1"),
            entry(campaign, app, "pending", user="u2"),
            entry(campaign, app, "sent", user="u3"),
            entry(campaign, app, "sent", user="u4", finished=yesterday),
            entry(campaign, app, "cancelled", user="u5", reason="ue.purchased"),
            entry(campaign, app, "cancelled", user="u6", reason="ue.purchased"),
            entry(campaign, app, "cancelled", user="u7", reason="paused", finished=yesterday),
            entry(campaign, app, "skipped", user="u8", reason="audience"),
            entry(campaign, app, "skipped", user="u9", reason="cap:automations"),
            # Finished before the period: not counted (pending ones are, whenever they came).
            entry(campaign, app, "sent", user="old", finished=NOW - timedelta(days=8)),
            entry(campaign, app, "pending", user="u10", finished=NOW - timedelta(days=40)),
            # Another automation's.
            entry(other_id, app, "sent", user="u11"),
        ],
    )
    found = (await stats_of(runtime, ios_app, token, days=7)).automation
    assert found is not None
    assert (found.pending, found.sent, found.cancelled, found.skipped) == (3, 2, 3, 2)
    assert found.entries == 10
    assert found.cancelled_reasons == {"ue.purchased": 2, "paused": 1}
    assert found.skipped_reasons == {"audience": 1, "cap:automations": 1}
    assert found.since == "2026-03-03T12:00:00"
    days = {day.date: day for day in found.detail}
    assert (days["2026-03-10"].sent, days["2026-03-10"].cancelled) == (1, 2)
    assert (days["2026-03-09"].sent, days["2026-03-09"].cancelled) == (1, 1)
    assert days["2026-03-10"].skipped == 2
    # The conversion event was given: none so far.
    assert found.converted == 0
    assert found.conversion is not None
    assert found.conversion.event == "ue.purchased"
    # Over 30 days, the older sent entry counts too.
    longer = (await stats_of(runtime, ios_app, token, days=30)).automation
    assert longer is not None
    assert longer.sent == 3


async def test_conversions_are_the_users_event_within_the_window_after_the_send(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    # ue.purchased within 48 hours (AUTOMATION's conversion).
    token = await created(api, ios_app, AUTOMATION)
    campaign = await campaign_id_of(runtime, token)
    app = ios_app.app_id
    sent = NOW - timedelta(days=3)
    await seed(
        runtime,
        [
            entry(campaign, app, "sent", user=f"c-{n}", finished=sent)
            for n in ("in", "late", "early", "other-name", "none", "twice")
        ]
        + [entry(campaign, app, "cancelled", user="c-cancelled", reason="ue.purchased")],
    )
    await events(
        runtime,
        ios_app,
        [
            ("ue.purchased", "c-in", sent + 47 * HOUR),  # converted
            ("ue.purchased", "c-late", sent + 49 * HOUR),  # after the window
            ("ue.purchased", "c-early", sent - HOUR),  # before the push
            ("ue.viewed", "c-other-name", sent + HOUR),  # another event
            ("ue.purchased", "c-twice", sent + HOUR),  # converted once, counted once
            ("ue.purchased", "c-twice", sent + 2 * HOUR),
            ("ue.purchased", "c-cancelled", NOW + HOUR),  # not sent: no conversion
            # An SDK event of the same name is not the server event.
            ("purchased", "c-none", sent + HOUR),
        ],
    )
    found = (await stats_of(runtime, ios_app, token)).automation
    assert found is not None
    assert found.sent == 6
    assert found.converted == 2
    day = next(d for d in found.detail if d.date == sent.date().isoformat())
    assert (day.sent, day.converted) == (6, 2)


async def test_sdk_conversions_follow_the_installation_or_else_the_custom_id(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    body = {
        **AUTOMATION,
        "trigger": {
            **AUTOMATION["trigger"],
            "event": "e.added_to_cart",
            "cancel_events": [],
            "conversion": {"event": "e.Purchased", "within_hours": 2},
        },
    }
    token = await created(api, ios_app, body)
    campaign = await campaign_id_of(runtime, token)
    app = ios_app.app_id
    await seed(
        runtime,
        [
            # An SDK trigger: the installation (and its custom id) entered.
            entry(campaign, app, "sent", install="i-1", user="shared"),
            entry(campaign, app, "sent", install="i-2", user="shared"),
            # A server trigger's entry has no installation: the custom id's installs count.
            entry(campaign, app, "sent", user="server-user"),
        ],
    )
    await events(
        runtime,
        ios_app,
        [
            ("purchased", "install:i-1", NOW + HOUR),
            ("purchased", "server-user", NOW + HOUR),  # an SDK event carrying the custom id
            ("ue.purchased", "shared", NOW + HOUR),  # a server event: not the SDK's
        ],
    )
    found = (await stats_of(runtime, ios_app, token)).automation
    assert found is not None
    assert (found.sent, found.converted) == (3, 2)


async def test_pushes_are_the_campaign_counts_of_the_period(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await created(api, ios_app, {**AUTOMATION, "trigger": {"event": "ue.x"}})
    rows = [
        push_event_row(
            app_id=ios_app.app_id,
            kind=kind,
            occurred_at=at,
            platform="ios",
            install_id="i-1",
            send_token="send-a",
            campaign_token=token,
        )
        for kind, at in [
            (PushEventKind.SENT, NOW),
            (PushEventKind.SENT, NOW - timedelta(days=1)),
            (PushEventKind.OPENED, NOW),
            (PushEventKind.ERROR, NOW),
            (PushEventKind.SENT, NOW - timedelta(days=20)),  # before a 7-day period
        ]
    ]
    async with transaction(runtime.sessions) as session:
        await record_push_events(session, rows)
    stats = await stats_of(runtime, ios_app, token, days=7)
    assert stats.automation is not None
    pushes = stats.automation.pushes
    assert (pushes.sent, pushes.direct_open, pushes.errors) == (2, 1, 1)
    # Batch's per-day detail is unchanged: every day.
    assert sum(day.sent for day in stats.detail) == 3
    # No conversion event: no conversions.
    assert stats.automation.conversion is None
    assert stats.automation.converted is None


async def test_newest_entries_page_by_keyset(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await created(api, ios_app, AUTOMATION)
    campaign = await campaign_id_of(runtime, token)
    other = await campaign_id_of(runtime, await created(api, ios_app, AUTOMATION))
    app = ios_app.app_id
    await seed(runtime, [entry(campaign, app, "pending", user=f"k-{n}") for n in range(7)])
    await seed(runtime, [entry(other, app, "pending", user=f"o-{n}") for n in range(3)])
    async with runtime.sessions() as session:
        first = await recent_entries(session, campaign_id=campaign, before=None, limit=4)
        rest = await recent_entries(session, campaign_id=campaign, before=first[-1].id, limit=4)
    assert [e.custom_id for e in first] == ["k-6", "k-5", "k-4", "k-3"]
    assert [e.custom_id for e in rest] == ["k-2", "k-1", "k-0"]
    assert rest[0].state == "pending"
    assert rest[0].finished_at is None


async def test_the_stats_route_adds_the_automation_object(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await created(api, ios_app, AUTOMATION)
    campaign = await campaign_id_of(runtime, token)
    now = utcnow()
    await seed(
        runtime,
        [
            entry(campaign, ios_app.app_id, "sent", user="r-1", finished=now - HOUR),
            entry(
                campaign, ios_app.app_id, "skipped", user="r-2", reason="unreachable", finished=now
            ),
        ],
    )
    await events(runtime, ios_app, [("ue.purchased", "r-1", now - HOUR / 2)])
    url = f"/1.1/{ios_app.api_key}/campaigns/stats/{token}"
    answer = await api.get(url, headers=ios_app.headers())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["campaign_token"] == token
    assert body["detail"] == []  # Batch's fields as for any campaign
    automation = body["automation"]
    assert automation["sent"] == 1
    assert automation["converted"] == 1
    assert automation["skipped_reasons"] == {"unreachable": 1}
    assert automation["conversion"] == {"event": "ue.purchased", "within_hours": 48}
    assert automation["detail"][0]["converted"] == 1
    # A campaign without a trigger answers as Batch does, without it.
    plain = await created(api, ios_app)
    answer = await api.get(
        f"/1.1/{ios_app.api_key}/campaigns/stats/{plain}", headers=ios_app.headers()
    )
    assert "automation" not in answer.json()
    for days in ("0", "366", "x"):
        refused = await api.get(url, headers=ios_app.headers(), params={"days": days})
        assert refused.status_code == 400
        assert "days" in refused.json()["message"]


async def test_lists_filter_automations_on_both_databases(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    automation = await created(api, ios_app, AUTOMATION)
    plain = await created(api, ios_app)
    async with runtime.sessions() as session:
        found = await session.get_one(App, ios_app.app_id)
        listed = {
            choice: [
                c.campaign_token
                for c in await campaigns.list_campaigns(
                    session,
                    access=live_access(found),
                    offset=0,
                    limit=50,
                    live=None,
                    from_api=None,
                    automation=choice,
                )
            ]
            for choice in (True, False, None)
        }
    assert listed[True] == [automation]
    assert listed[False] == [plain]
    assert set(listed[None]) == {automation, plain}
