"""Campaign statistics from the counts written with the events, and from the influenced and
re-engaged opens stored per finished day (clarion.stats)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select

from clarion.apps.models import App
from clarion.apps.service import live_access
from clarion.campaigns.models import CampaignOpenDay
from clarion.campaigns.schemas import CampaignStats
from clarion.dashboard import analytics
from clarion.db import transaction
from clarion.delivery.models import Send, SendKind
from clarion.events.models import APP_OPEN_EVENT, PushEventCount, PushEventKind
from clarion.events.service import (
    fold_event_counts,
    push_event_row,
    record_push_events,
    record_tracked_events,
    recount_push_events,
)
from clarion.runtime import Runtime
from clarion.stats.service import SETTLE, campaign_stats, group_influenced_opens
from clarion.stats.tasks import attribute_finished_days, attribute_open_days, keep_up
from clarion.transactional.models import GroupOpenDay
from tests.conftest import ClientApp
from tests.support.clock import Clock
from tests.support.waiting import eventually, lock_waited
from tests.test_campaigns import created

SENT, OPENED, ERROR = PushEventKind.SENT, PushEventKind.OPENED, PushEventKind.ERROR
# Midday, so that an hour either way stays on the same UTC day.
DAY = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def draft(api: httpx.AsyncClient, app: ClientApp) -> str:
    return await created(api, app, live=False)


async def record(
    runtime: Runtime,
    app: ClientApp,
    token: str | None,
    events: list[tuple[PushEventKind, datetime, str]],
    *,
    send: str = "send-a",
) -> None:
    """Push events of the campaign through the event log's writer: (kind, time, install)."""
    rows = [
        push_event_row(
            app_id=app.app_id,
            kind=kind,
            occurred_at=at,
            platform="ios",
            install_id=install,
            send_token=send,
            campaign_token=token,
        )
        for kind, at, install in events
    ]
    async with transaction(runtime.sessions) as session:
        await record_push_events(session, rows)


async def app_opens(runtime: Runtime, app: ClientApp, opens: list[tuple[str, datetime]]) -> None:
    rows = [
        {"app_id": app.app_id, "install_id": install, "name": APP_OPEN_EVENT, "occurred_at": at}
        for install, at in opens
    ]
    async with transaction(runtime.sessions) as session:
        await record_tracked_events(session, rows)


async def stats_of(
    runtime: Runtime, app: ClientApp, token: str, now: datetime
) -> dict[str, dict[str, int]]:
    """Per day: the figures that are not zero."""
    async with transaction(runtime.sessions) as session:
        found = await session.get_one(App, app.app_id)
        stats: CampaignStats = await campaign_stats(
            session, access=live_access(found), token=token, now=now
        )
    return {
        day.date: {
            field: value
            for field, value in day.model_dump(exclude={"date", "versions"}).items()
            if value
        }
        for day in stats.detail
    }


async def count_rows(runtime: Runtime, token: str) -> list[tuple[str, str, str, int, bool]]:
    async with transaction(runtime.sessions) as session:
        rows = await session.execute(
            select(
                PushEventCount.day,
                PushEventCount.send_token,
                PushEventCount.kind,
                PushEventCount.count,
                PushEventCount.folded,
            ).where(PushEventCount.campaign_token == token)
        )
        return sorted((d, s, k, c, f) for d, s, k, c, f in rows)


def summed(rows: list[tuple[str, str, str, int, bool]]) -> Counter[tuple[str, str, str]]:
    totals: Counter[tuple[str, str, str]] = Counter()
    for day, send, kind, count, _ in rows:
        totals[(day, send, kind)] += count
    return totals


class TestCounts:
    async def test_events_are_counted_as_they_are_written_and_folded_later(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await draft(api, ios_app)
        next_day = DAY + timedelta(days=1)
        await record(runtime, ios_app, token, [(SENT, DAY, "i-1"), (SENT, DAY, "i-2")])
        await record(runtime, ios_app, token, [(SENT, DAY, "i-3"), (ERROR, DAY, "i-4")])
        await record(runtime, ios_app, token, [(OPENED, DAY, "i-1"), (OPENED, next_day, "i-2")])
        # Events of no campaign (a transactional send) are not counted.
        await record(runtime, ios_app, None, [(SENT, DAY, "i-9")])

        written = await count_rows(runtime, token)
        assert not any(folded for *_, folded in written)
        expected = {
            ("2026-03-10", "send-a", "push_sent"): 3,
            ("2026-03-10", "send-a", "push_error"): 1,
            ("2026-03-10", "send-a", "push_opened"): 1,
            ("2026-03-11", "send-a", "push_opened"): 1,
        }
        assert summed(written) == expected
        before = await stats_of(runtime, ios_app, token, next_day)
        # (Each opener had not opened the app before: re-engaged.)
        assert before == {
            "2026-03-10": {
                "sent": 3,
                "sent_optins": 3,
                "direct_open": 1,
                "reengaged": 1,
                "errors": 1,
            },
            "2026-03-11": {"direct_open": 1, "reengaged": 1},
        }

        while True:
            async with transaction(runtime.sessions) as session:
                if not await fold_event_counts(session):
                    break
        folded = await count_rows(runtime, token)
        assert [(d, s, k, c) for d, s, k, c, f in folded if f] == sorted(
            (d, s, k, c) for (d, s, k), c in expected.items()
        )
        assert len(folded) == len(expected)
        assert await stats_of(runtime, ios_app, token, next_day) == before

        # Later events add rows again, and the next fold takes them in.
        await record(runtime, ios_app, token, [(SENT, DAY, "i-5")])
        async with transaction(runtime.sessions) as session:
            await fold_event_counts(session)
        assert summed(await count_rows(runtime, token))[("2026-03-10", "send-a", "push_sent")] == 4

    async def test_counting_the_log_again_gives_the_same_counts(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await draft(api, ios_app)
        await record(runtime, ios_app, token, [(SENT, DAY, f"i-{n}") for n in range(5)])
        await record(runtime, ios_app, token, [(OPENED, DAY, "i-1")], send="send-b")
        written = summed(await count_rows(runtime, token))
        async with transaction(runtime.sessions) as session:
            await recount_push_events(session)
        recounted = await count_rows(runtime, token)
        assert summed(recounted) == written
        assert all(folded for *_, folded in recounted)

    async def test_concurrent_folds_count_each_row_once(
        self, backend: str, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await draft(api, ios_app)
        for n in range(6):
            await record(runtime, ios_app, token, [(SENT, DAY, f"i-{n}")])
        first_deleted = asyncio.Event()

        async def fold(wait_for: asyncio.Event | None) -> None:
            async with transaction(runtime.sessions) as session:
                if wait_for is not None:
                    await wait_for.wait()
                await fold_event_counts(session)
                if wait_for is None:
                    first_deleted.set()
                    # Held open until the second fold waits for the rows this one deleted (on
                    # SQLite it waits for the one connection: the folds cannot overlap).
                    if backend == "postgres":
                        await lock_waited(
                            runtime.settings.database_url,
                            statement="DELETE FROM push_event_counts",
                            what="the second fold waiting for the first one's rows",
                        )

        await asyncio.gather(fold(None), fold(first_deleted))
        assert summed(await count_rows(runtime, token)) == {
            ("2026-03-10", "send-a", "push_sent"): 6
        }


class TestFinishedDays:
    async def test_a_finished_day_is_stored_and_read_back_and_today_is_matched_live(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await draft(api, ios_app)
        sent_at = DAY - timedelta(hours=1)
        late_send = DAY.replace(hour=23)
        await record(runtime, ios_app, token, [(SENT, sent_at, f"i-{n}") for n in range(5)])
        await record(runtime, ios_app, token, [(SENT, late_send, "i-5"), (OPENED, DAY, "i-0")])
        # i-1 and i-2 open the app within the influence window; only i-2 had been away (no
        # app open in the 30 days before), as had i-5, whose open falls on the next day.
        next_day = DAY + timedelta(days=1)
        await app_opens(
            runtime,
            ios_app,
            [
                ("i-1", DAY),
                ("i-2", DAY + timedelta(minutes=5)),
                ("i-1", sent_at - timedelta(days=2)),
                ("i-0", sent_at - timedelta(days=3)),
                ("i-5", next_day.replace(hour=0, minute=30)),
            ],
        )
        expected = {
            "2026-03-10": {
                "sent": 6,
                "sent_optins": 6,
                "direct_open": 1,
                "influenced_open": 2,
                "reengaged": 1,
            },
            "2026-03-11": {"influenced_open": 1, "reengaged": 1},
        }
        # The day after, before the day has settled: nothing stored, all matched on read.
        early = next_day.replace(hour=1)
        assert early < DAY.replace(hour=0) + timedelta(days=1) + SETTLE
        async with transaction(runtime.sessions) as session:
            await attribute_finished_days(session, now=early, limit=1000)
        assert await stored_days(runtime, token) == {}
        assert await stats_of(runtime, ios_app, token, early) == expected

        # The workers' provisional figures of the days still open are read instead...
        async with transaction(runtime.sessions) as session:
            await attribute_open_days(session, now=early)
        assert await stored_days(runtime, token) == {
            "2026-03-10": {"": (2, 1, False)},
            "2026-03-11": {"": (1, 1, False)},
        }
        await app_opens(runtime, ios_app, [("i-3", DAY + timedelta(minutes=20))])
        assert await stats_of(runtime, ios_app, token, early) == expected
        # ... until their next refresh (i-3 had been away too: re-engaged as well).
        async with transaction(runtime.sessions) as session:
            await attribute_open_days(session, now=early)
        expected["2026-03-10"].update(influenced_open=3, reengaged=2)
        assert await stats_of(runtime, ios_app, token, early) == expected

        later = next_day.replace(hour=3)
        async with transaction(runtime.sessions) as session:
            while await attribute_finished_days(session, now=later, limit=1000):
                pass
        assert (await stored_days(runtime, token))["2026-03-10"] == {"": (3, 2, True)}
        assert await stats_of(runtime, ios_app, token, later) == expected

        # A final day is read, not matched again: an app open reported late is not counted.
        await app_opens(runtime, ios_app, [("i-4", DAY + timedelta(minutes=30))])
        assert await stats_of(runtime, ios_app, token, later) == expected

        # Once the next day has settled too, it is stored as it was matched.
        much_later = DAY + timedelta(days=3)
        async with transaction(runtime.sessions) as session:
            while await attribute_finished_days(session, now=much_later, limit=1000):
                pass
        assert (await stored_days(runtime, token))["2026-03-11"] == {"": (1, 1, True)}
        assert await stats_of(runtime, ios_app, token, much_later) == expected

    async def test_an_ab_campaign_stores_each_version_and_marks_empty_days(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await ab_campaign(api, ios_app, runtime)
        await record(runtime, ios_app, token, [(SENT, DAY, "i-a")], send=f"{token}-a")
        await record(runtime, ios_app, token, [(SENT, DAY, "i-b")], send=f"{token}-b")
        await app_opens(runtime, ios_app, [("i-a", DAY + timedelta(minutes=1))])
        now = DAY + timedelta(days=3)
        async with transaction(runtime.sessions) as session:
            while await attribute_finished_days(session, now=now, limit=1000):
                pass
        # The day after the sends had no influenced open: its row says it was done.
        assert await stored_days(runtime, token) == {
            "2026-03-10": {"": (0, 0, True), "a": (1, 1, True)},
            "2026-03-11": {"": (0, 0, True)},
        }
        async with transaction(runtime.sessions) as session:
            found = await session.get_one(App, ios_app.app_id)
            stats = await campaign_stats(session, access=live_access(found), token=token, now=now)
        [day] = stats.detail
        assert day.influenced_open == 1
        assert day.versions is not None
        assert day.versions["a"].influenced_open == 1
        assert day.versions["b"].influenced_open == 0
        assert (day.versions["a"].sent, day.versions["b"].sent) == (1, 1)


async def ab_campaign(api: httpx.AsyncClient, app: ClientApp, runtime: Runtime) -> str:
    """A draft with versions a and b, and a send of each named `{token}-{version}`."""
    token = await created(
        api,
        app,
        live=False,
        messages=[
            {"language": "en", "body": "A", "version": "a"},
            {"language": "en", "body": "B", "version": "b"},
        ],
    )
    async with transaction(runtime.sessions) as session:
        for version in ("a", "b"):
            session.add(
                Send(
                    token=f"{token}-{version}",
                    app_id=app.app_id,
                    kind=SendKind.CAMPAIGN.value,
                    campaign_token=token,
                    version=version,
                    content={},
                )
            )
    return token


async def stored_days(runtime: Runtime, token: str) -> dict[str, dict[str, Any]]:
    async with transaction(runtime.sessions) as session:
        rows = await session.scalars(
            select(CampaignOpenDay).where(CampaignOpenDay.campaign_token == token)
        )
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            found.setdefault(row.day, {})[row.version] = (
                row.influenced_open,
                row.reengaged,
                row.final,
            )
        return found


class TestGroups:
    async def test_a_group_ids_influenced_opens_are_matched_then_stored_per_day(
        self, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        sent_at = DAY - timedelta(hours=1)
        next_day = DAY + timedelta(days=1)

        rows = [group_event(ios_app, "welcome", sent_at, f"i-{n}") for n in range(4)]
        rows += [
            group_event(ios_app, "welcome", DAY.replace(hour=23), "i-5"),
            group_event(ios_app, "welcome", DAY, "i-1", OPENED),
            group_event(ios_app, "other", sent_at, "i-9"),
            # A campaign's event is the campaign's, whatever group_id it carries.
            group_event(ios_app, "welcome", sent_at, "i-c", campaign_token="a-campaign"),
        ]
        async with transaction(runtime.sessions) as session:
            await record_push_events(session, rows)
        # i-0 opens the app after its send (influenced), i-1 too but it opened the notification
        # (direct), i-5 the next day within the window, i-9 after the other group's send, i-c
        # after the campaign's.
        await app_opens(
            runtime,
            ios_app,
            [
                ("i-0", DAY),
                ("i-1", DAY),
                ("i-5", next_day.replace(hour=0, minute=30)),
                ("i-9", DAY),
                ("i-c", DAY),
            ],
        )
        sent_days = {"welcome": {"2026-03-10"}, "other": {"2026-03-10"}}

        async def influenced(now: datetime) -> dict[tuple[str, str], int]:
            async with transaction(runtime.sessions) as session:
                return await group_influenced_opens(
                    session, ios_app.app_id, sent_days, first="2026-03-10", now=now
                )

        expected = {
            ("welcome", "2026-03-10"): 1,
            ("welcome", "2026-03-11"): 1,
            ("other", "2026-03-10"): 1,
        }
        early = next_day.replace(hour=1)  # before the day has settled: matched on read
        assert await influenced(early) == expected
        async with transaction(runtime.sessions) as session:
            await attribute_open_days(session, now=early)
        assert await stored_group_days(runtime, ios_app) == {
            ("welcome", "2026-03-10"): (1, False),
            ("welcome", "2026-03-11"): (1, False),
            ("other", "2026-03-10"): (1, False),
            ("other", "2026-03-11"): (0, False),
        }

        later = next_day.replace(hour=3)
        async with transaction(runtime.sessions) as session:
            while await attribute_finished_days(session, now=later, limit=1000):
                pass
        assert (await stored_group_days(runtime, ios_app))[("welcome", "2026-03-10")] == (1, True)
        # A final day is read, not matched again: an app open reported late is not counted.
        await app_opens(runtime, ios_app, [("i-2", DAY + timedelta(minutes=30))])
        assert await influenced(later) == expected

    async def test_the_groups_list_and_a_groups_page_count_a_period_alike(
        self, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        now = DAY + timedelta(days=7)  # a 7-day period from 2026-03-11 to 2026-03-17
        rows = [
            # Sent the evening before the period; the open falls on its first day.
            group_event(ios_app, "a", DAY.replace(hour=23), "i-a"),
            group_event(ios_app, "a", DAY + timedelta(days=5), "i-a2"),
            group_event(ios_app, "b", DAY + timedelta(days=1), "i-b"),
        ]
        async with transaction(runtime.sessions) as session:
            await record_push_events(session, rows)
        await app_opens(runtime, ios_app, [("i-a", DAY.replace(hour=23) + timedelta(hours=1))])

        async def read() -> tuple[dict[str, tuple[int, int]], int, dict[str, int]]:
            async with transaction(runtime.sessions) as session:
                listed = await analytics.group_stats(
                    session, app_id=ios_app.app_id, days=7, now=now
                )
                report = await analytics.group_report(
                    session, app_id=ios_app.app_id, group_id="a", days=7, now=now
                )
            return (
                {row.group_id: (row.totals.sent, row.totals.influenced_open) for row in listed},
                report.totals.influenced_open,
                {day: totals.influenced_open for day, totals in report.days},
            )

        expected = ({"a": (1, 1), "b": (1, 0)}, 1, {"2026-03-11": 1, "2026-03-15": 0})
        assert await read() == expected  # matched on read
        async with transaction(runtime.sessions) as session:
            while await attribute_finished_days(session, now=now, limit=1000):
                pass
        stored = await stored_group_days(runtime, ios_app)
        assert stored[("a", "2026-03-10")] == (0, True)  # before the period: not counted in it
        assert stored[("a", "2026-03-11")] == (1, True)
        assert await read() == expected
        # A day stored with nothing is read as nothing, not matched again.
        await app_opens(runtime, ios_app, [("i-b", DAY + timedelta(days=1, minutes=5))])
        assert stored[("b", "2026-03-11")] == (0, True)
        assert await read() == expected


def group_event(
    app: ClientApp,
    group_id: str,
    at: datetime,
    install: str,
    kind: PushEventKind = SENT,
    *,
    campaign_token: str | None = None,
) -> Any:
    return push_event_row(
        app_id=app.app_id,
        kind=kind,
        occurred_at=at,
        platform="ios",
        install_id=install,
        send_token=f"tx-{group_id}-{install}",
        group_id=group_id,
        campaign_token=campaign_token,
    )


async def stored_group_days(
    runtime: Runtime, app: ClientApp
) -> dict[tuple[str, str], tuple[int, bool]]:
    """The app's: other tests of the module store days of the same group_ids."""
    async with transaction(runtime.sessions) as session:
        rows = await session.scalars(select(GroupOpenDay).where(GroupOpenDay.app_id == app.app_id))
        return {(row.group_id, row.day): (row.influenced_open, row.final) for row in rows}


class TestUpkeep:
    async def test_a_round_folds_counts_and_stores_finished_and_open_days(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        token = await draft(api, ios_app)
        now = datetime.now(UTC)
        three_days_ago = now - timedelta(days=3)
        for n in range(3):  # three batches: three count rows to fold
            await record(runtime, ios_app, token, [(SENT, three_days_ago, f"i-{n}")])
        await record(runtime, ios_app, token, [(SENT, now, "i-9")])
        await keep_up(runtime.sessions)
        rows = await count_rows(runtime, token)
        assert all(folded for *_, folded in rows)
        assert summed(rows)[(three_days_ago.date().isoformat(), "send-a", "push_sent")] == 3
        days = await stored_days(runtime, token)
        assert days[three_days_ago.date().isoformat()][""][2] is True  # final
        assert days[now.date().isoformat()][""][2] is False  # provisional

    async def test_a_day_turns_final_when_the_upkeeps_clock_says_it_settled(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # A UTC day ends at midnight and is final SETTLE later, by the clock the upkeep is given.
        token = await draft(api, ios_app)
        await record(runtime, ios_app, token, [(SENT, DAY, "i-0")])
        settled = DAY.replace(hour=0) + timedelta(days=1) + SETTLE
        clock = Clock(settled - timedelta(seconds=1))
        await keep_up(runtime.sessions, clock=clock)
        day = DAY.date().isoformat()
        assert (await stored_days(runtime, token))[day][""][2] is False  # provisional
        clock.now = settled
        await keep_up(runtime.sessions, clock=clock)
        assert (await stored_days(runtime, token))[day][""][2] is True  # final

    async def test_a_round_ends_while_a_campaign_keeps_writing_counts(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # A sending campaign writes count rows all the time; folding them again and again would
        # hold the upkeep (on SQLite, the one connection) until its deadline, and the finished
        # days after the fold would wait for another round. One day per transaction, as SQLite.
        # The budget is an hour: a round that folded until its budget would not end while the
        # writers write, and the timeout below (a hang detector, far above the fraction of a
        # second a round takes on any machine) would fail the test.
        sending, finished = await draft(api, ios_app), await draft(api, ios_app)
        now = datetime.now(UTC)
        await record(runtime, ios_app, finished, [(SENT, now - timedelta(days=3), "i-0")])
        writing = True
        written = [0, 0, 0]

        async def keep_sending(worker: int) -> None:
            while writing:
                count = written[worker]
                await record(runtime, ios_app, sending, [(SENT, now, f"s-{worker}-{count}")])
                written[worker] += 1

        async def all_writing() -> bool:
            return all(written)

        writers = [asyncio.create_task(keep_sending(worker)) for worker in range(3)]
        await eventually(all_writing, what="each writer's first count row")
        before = sum(written)
        async with asyncio.timeout(120):
            await keep_up(runtime.sessions, budget_seconds=3600.0, days=1)
        during = sum(written) - before
        writing = False
        await asyncio.gather(*writers)

        assert during > 0, "the counts were not written while the round ran"
        days = await stored_days(runtime, finished)
        assert days[(now - timedelta(days=3)).date().isoformat()][""][2] is True  # final

    async def test_open_days_are_refreshed_those_computed_longest_ago_first(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # Three subjects send today (midday: yesterday has settled, tomorrow has not begun),
        # a day no other test of the module's database sends on.
        now = DAY + timedelta(days=400)
        token = await draft(api, ios_app)
        await record(runtime, ios_app, token, [(SENT, now, "i-0")])
        async with transaction(runtime.sessions) as session:
            await record_push_events(
                session, [group_event(ios_app, g, now, f"i-{g}") for g in ("g-1", "g-2")]
            )

        async def refresh(**bounds: Any) -> int:
            async with transaction(runtime.sessions) as session:
                return await attribute_open_days(session, now=now, **bounds)

        round_start = now  # days are stamped computed at the time the upkeep is given
        assert await refresh(limit=2) == 2

        async def stored() -> int:
            groups = [
                key for key in await stored_group_days(runtime, ios_app) if key[0] in ("g-1", "g-2")
            ]
            return len(groups) + len(await stored_days(runtime, token))

        assert await stored() == 2
        # The one never computed comes before those computed already.
        assert await refresh(limit=1) == 1
        assert await stored() == 3
        # A round refreshes each day once: all three were computed since it started.
        assert await refresh(before=round_start, limit=10) == 0
        assert await refresh(before=now + timedelta(seconds=1), limit=10) == 3
