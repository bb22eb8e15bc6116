"""Pushes sent again after an unknown outcome (docs/delivery.md#counting-re-sends): counted with
the events, read by the campaign statistics (API and dashboard, automations included), summed
in a send's progress, and flagged in the push events export (tests/test_exports.py).

The delivery workers write `resent` (push_events.resent, delivery_batches.resent); these tests
write the same rows through the event log's writer and the batch table, as the workers do, and
read them back through the routes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select

from clarion.campaigns.models import Campaign, CampaignRun, RunState
from clarion.dashboard.models import Role
from clarion.db import transaction, utcnow
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send, SendKind
from clarion.events.models import PushEventCount, PushEventKind
from clarion.events.service import (
    fold_event_counts,
    push_event_row,
    record_push_events,
    recount_push_events,
)
from clarion.runtime import Runtime
from tests.automations.test_api import AUTOMATION
from tests.conftest import ClientApp
from tests.support.dashboard import sign_in_as
from tests.test_campaign_stats import ab_campaign
from tests.test_campaigns import created, get

SENT, OPENED = PushEventKind.SENT, PushEventKind.OPENED
# Midday, so that an hour either way stays on the same UTC day.
DAY = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LABEL = "sent again (unknown outcome)"


async def record(
    runtime: Runtime,
    app: ClientApp,
    events: list[tuple[PushEventKind, bool]],
    *,
    at: datetime = DAY,
    campaign: str | None = None,
    send: str = "send-a",
    group: str | None = None,
) -> None:
    """Push events through the event log's writer: (kind, resent), one install each."""
    rows = [
        push_event_row(
            app_id=app.app_id,
            kind=kind,
            occurred_at=at,
            platform="ios",
            install_id=f"i-{n}",
            send_token=send,
            campaign_token=campaign,
            group_id=group,
            resent=resent,
        )
        for n, (kind, resent) in enumerate(events)
    ]
    async with transaction(runtime.sessions) as session:
        await record_push_events(session, rows)


async def counts_of(runtime: Runtime, token: str) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(day, send, kind) -> (count, rows) of a campaign's count rows."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(
                PushEventCount.day,
                PushEventCount.send_token,
                PushEventCount.kind,
                PushEventCount.count,
            ).where(PushEventCount.campaign_token == token)
        )
        found: dict[tuple[str, str, str], tuple[int, int]] = {}
        for day, send, kind, count in rows:
            total, seen = found.get((day, send, kind), (0, 0))
            found[(day, send, kind)] = (total + count, seen + 1)
        return found


async def done_batch(
    runtime: Runtime,
    app: ClientApp,
    *,
    sent: int,
    resent: int,
    campaign: str | None = None,
    token: str | None = None,
) -> str:
    """A send with one finished batch whose counters say `sent`, of them `resent` re-sent (as
    the delivery worker writes them); for a campaign, in a run of it. Returns the send token."""
    async with transaction(runtime.sessions) as session:
        run_id = None
        if campaign is not None:
            campaign_id = await session.scalar(
                select(Campaign.id).where(Campaign.token == campaign)
            )
            assert campaign_id is not None
            run = CampaignRun(
                campaign_id=campaign_id,
                occurrence=0,
                scheduled_for=utcnow(),
                state=RunState.DONE.value,
                body={},
            )
            session.add(run)
            await session.flush()
            run_id = run.id
        send = Send(
            token=token or f"tx-{resent}-{sent}",
            app_id=app.app_id,
            kind=SendKind.CAMPAIGN.value if campaign else SendKind.TRANSACTIONAL.value,
            campaign_token=campaign,
            group_id=None if campaign else "tests",
            run_id=run_id,
            content={},
        )
        session.add(send)
        await session.flush()
        session.add(
            DeliveryBatch(
                send_id=send.id,
                status=BatchStatus.DONE.value,
                recipients={},
                targeted=sent,
                sent=sent,
                resent=resent,
            )
        )
        return send.token


class TestCounts:
    async def test_resent_pushes_are_counted_beside_sent_folded_and_recounted(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await created(api, ios_app, live=False)
        await record(runtime, ios_app, [(SENT, False), (SENT, True)], campaign=token)
        # `resent` on an event that is not a send counts nothing more.
        await record(runtime, ios_app, [(SENT, True), (OPENED, True)], campaign=token)
        day = DAY.date().isoformat()
        written = await counts_of(runtime, token)
        assert {key: total for key, (total, _) in written.items()} == {
            (day, "send-a", SENT.value): 3,
            (day, "send-a", OPENED.value): 1,
            (day, "send-a", "push_resent"): 2,
        }

        async with transaction(runtime.sessions) as session:
            while await fold_event_counts(session):
                pass
        folded = await counts_of(runtime, token)
        assert folded == {key: (total, 1) for key, (total, _) in written.items()}

        async with transaction(runtime.sessions) as session:
            await recount_push_events(session)
        assert await counts_of(runtime, token) == folded


class TestCampaignStats:
    async def test_the_stats_route_adds_resent_per_day_and_version(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await ab_campaign(api, ios_app, runtime)
        a, b = f"{token}-a", f"{token}-b"
        await record(
            runtime, ios_app, [(SENT, True), (SENT, True), (SENT, False)], campaign=token, send=a
        )
        await record(runtime, ios_app, [(SENT, False)], campaign=token, send=b)
        await record(
            runtime, ios_app, [(SENT, True)], campaign=token, send=b, at=DAY + timedelta(days=1)
        )

        answer = await api.get(
            f"/1.1/{ios_app.api_key}/campaigns/stats/{token}", headers=ios_app.headers()
        )
        assert answer.status_code == 200, answer.text
        days = {day["date"]: day for day in answer.json()["detail"]}
        first, second = days["2026-03-10"], days["2026-03-11"]
        assert (first["sent"], first["resent"], first["sent_optins"]) == (4, 2, 4)
        assert {v: (s["sent"], s["resent"]) for v, s in first["versions"].items()} == {
            "a": (3, 2),
            "b": (1, 0),
        }
        assert (second["sent"], second["resent"]) == (1, 1)

    async def test_an_automations_pushes_count_the_resent(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await created(api, ios_app, AUTOMATION)
        now = utcnow()
        await record(
            runtime,
            ios_app,
            [(SENT, True), (SENT, False)],
            campaign=token,
            at=now - timedelta(hours=1),
        )
        answer = await api.get(
            f"/1.1/{ios_app.api_key}/campaigns/stats/{token}", headers=ios_app.headers()
        )
        pushes = answer.json()["automation"]["pushes"]
        assert (pushes["sent"], pushes["resent"]) == (2, 1)

        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)
        page = await api.get(f"/dashboard/apps/{ios_app.app_id}/automations/{token}")
        assert page.status_code == 200, page.text
        assert figure(page.text) == "1"
        assert 'data-hint="resent"' in page.text
        # The per-day table gains the column: pushes, re-sent, direct opens, errors.
        table = page.text[page.text.index('id="automation-days"') :]
        row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", table, re.S)
        assert row is not None
        assert re.findall(r'<td class="num">([^<]*)</td>', row.group(1))[-4:] == [
            "2",
            "1",
            "0",
            "0",
        ]


def figure(page: str) -> str | None:
    """The number of the "sent again" figure, or None when the page shows none."""
    found = re.search(rf'data-figure="resent"[^>]*><b>([^<]*)</b><span>{re.escape(LABEL)}', page)
    return found.group(1) if found else None


class TestDashboard:
    async def test_a_campaign_page_shows_the_resent_in_results_and_progress(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await created(api, ios_app, live=False)
        quiet = await created(api, ios_app, live=False)
        await record(runtime, ios_app, [(SENT, True), (SENT, False), (SENT, False)], campaign=token)
        await record(runtime, ios_app, [(SENT, False)], campaign=quiet, send="send-q")
        await done_batch(runtime, ios_app, sent=5, resent=2, campaign=token, token="run-send")
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)
        base = f"/dashboard/apps/{ios_app.app_id}/campaigns"

        page = await api.get(f"{base}/{token}/stats")
        assert page.status_code == 200, page.text
        # Results (from the counts) and delivery progress (from the batches).
        found = re.findall(
            rf'data-figure="resent"[^>]*><b>([^<]*)</b><span>{re.escape(LABEL)}', page.text
        )
        assert sorted(found) == ["1", "2"]
        assert "docs/delivery.md#counting-re-sends" in page.text
        assert 'data-hint="resent"' in page.text
        assert re.search(r">Sent again \(unknown outcome\)</th>", page.text)
        progress = await api.get(f"{base}/{token}/progress")
        assert figure(progress.text) == "2"

        # Nothing re-sent: nothing shown.
        page = await api.get(f"{base}/{quiet}/stats")
        assert page.status_code == 200
        assert figure(page.text) is None
        assert "Sent again" not in page.text

    async def test_a_group_ids_page_shows_its_resent(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await record(
            runtime,
            ios_app,
            [(SENT, True), (SENT, False)],
            group="welcome",
            send="tx-w",
            at=utcnow(),
        )
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.VIEWER)).use(api)
        page = await api.get(f"/dashboard/apps/{ios_app.app_id}/analytics/groups/welcome")
        assert page.status_code == 200, page.text
        assert figure(page.text) == "1"


class TestSendProgress:
    async def test_a_sends_and_a_campaigns_progress_sum_their_batches_resent(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        send = await done_batch(runtime, ios_app, sent=4, resent=3)
        answer = await api.get(
            f"/1.1/{ios_app.api_key}/transactional/sends/{send}", headers=ios_app.headers()
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["sent"], answer.json()["resent"]) == (4, 3)

        token = await created(api, ios_app, live=False)
        await done_batch(runtime, ios_app, sent=6, resent=1, campaign=token, token="run-1")
        progress = (await get(api, ios_app, token)).json()["progress"]
        assert progress == {"targeted": 6, "sent": 6, "resent": 1, "errors": 0}
