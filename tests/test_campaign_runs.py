"""Campaign scheduling and fan-out, end to end: scheduler -> outbox -> workers -> simulator.

Each test drives its own CampaignScheduler with a clock it controls (the session's background
scheduler is idle in tests, see conftest), over the real database and the real delivery path.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, insert, select, text, update

from clarion.audiences.resolved import installations_changed
from clarion.campaigns.fanout import version_of
from clarion.campaigns.models import Campaign, CampaignRun
from clarion.campaigns.recurrence import occurrence_time
from clarion.campaigns.schemas import CampaignBody
from clarion.campaigns.tasks import CampaignScheduler
from clarion.config import Settings
from clarion.db import transaction
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send
from clarion.queue import JobQueue
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from tests.conftest import ClientApp
from tests.support.clock import Clock
from tests.support.waiting import eventually
from tests.test_campaigns import create, created, error, get

T = datetime(2030, 6, 1, 10, 0, tzinfo=UTC)


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def scheduler(
    runtime: Runtime, clock: Clock, *, queue: JobQueue | None = None, **settings: Any
) -> CampaignScheduler:
    chosen: Settings = runtime.settings.model_copy(update=settings)
    return CampaignScheduler(runtime.sessions, queue or runtime.queue, chosen, clock=clock)


async def add_installs(
    runtime: Runtime, app: ClientApp, count: int, **fields: Any
) -> list[Installation]:
    fields.setdefault("push_optin", True)
    async with transaction(runtime.sessions) as session:
        rows = [
            Installation(
                app_id=app.app_id,
                install_id=f"install-{secrets.token_hex(6)}",
                push_token=secrets.token_hex(32),
                **fields,
            )
            for _ in range(count)
        ]
        session.add_all(rows)
        await session.flush()
        # As the SDK API does: audiences that list these installs' ids now hold them.
        await installations_changed(
            session, app_id=app.app_id, installation_ids=[row.id for row in rows]
        )
        return rows


async def runs_of(runtime: Runtime, token: str) -> list[CampaignRun]:
    async with runtime.sessions() as session:
        return list(
            await session.scalars(
                select(CampaignRun)
                .join(Campaign, Campaign.id == CampaignRun.campaign_id)
                .where(Campaign.token == token)
                .order_by(CampaignRun.occurrence)
            )
        )


async def batches_of(runtime: Runtime, token: str) -> list[tuple[DeliveryBatch, Send]]:
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(DeliveryBatch, Send)
            .join(Send, Send.id == DeliveryBatch.send_id)
            .where(Send.campaign_token == token, DeliveryBatch.attempt == 0)
            .order_by(DeliveryBatch.id)
        )
        return [(batch, send) for batch, send in rows.all()]


async def reached(runtime: Runtime, token: str) -> Counter[int]:
    """How many times each installation was written into a batch of the campaign."""
    return Counter(
        installation
        for batch, _ in await batches_of(runtime, token)
        for installation in batch.recipients["installations"]
    )


async def campaign_state(runtime: Runtime, token: str) -> Campaign:
    async with runtime.sessions() as session:
        campaign = await session.scalar(select(Campaign).where(Campaign.token == token))
        assert campaign is not None
        return campaign


async def wait_delivered(runtime: Runtime, token: str) -> None:
    async def delivered() -> bool:
        return all(b.status == BatchStatus.DONE.value for b, _ in await batches_of(runtime, token))

    await eventually(delivered, what=f"campaign {token} delivered")


async def send_now(api: httpx.AsyncClient, app: ClientApp, runtime: Runtime, **changes: Any) -> str:
    """Creates a `push_time: now` campaign, starts it and waits until it is delivered."""
    token = await created(api, app, push_time="now", **changes)
    clock = Clock(datetime.now(UTC))
    await scheduler(runtime, clock).tick()
    await wait_delivered(runtime, token)
    await scheduler(runtime, clock).tick()  # closes the delivered run
    return token


class TestSchedule:
    async def test_a_campaign_starts_at_its_time_and_not_before(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        installs = await add_installs(runtime, ios_app, 3)
        token = await created(api, ios_app, push_time="2030-06-01T10:00:00")
        clock = Clock(T - timedelta(seconds=1))
        await scheduler(runtime, clock).tick()
        assert await runs_of(runtime, token) == []
        clock.now = T
        await scheduler(runtime, clock).tick()
        assert [r.occurrence for r in await runs_of(runtime, token)] == [0]
        assert await reached(runtime, token) == Counter({i.id: 1 for i in installs})
        assert (await campaign_state(runtime, token)).state == "running"

    async def test_now_reaches_each_opted_in_install_once_and_is_counted(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        sim_control: httpx.Client,
    ) -> None:
        targets = await add_installs(runtime, ios_app, 5, language="fr")
        opted_out = await add_installs(runtime, ios_app, 1, push_optin=False)
        debug = await add_installs(runtime, ios_app, 1, is_dev=True)
        started = datetime.now(UTC)
        token = await send_now(
            api,
            ios_app,
            runtime,
            messages=[
                {"language": "en", "title": "Hi", "body": "Sale"},
                {"language": "fr", "title": "Salut", "body": "Soldes"},
            ],
        )

        for install in targets:
            got = sim_control.get(f"/_sim/apns/tokens/{install.push_token}").json()
            assert got["count"] == 1
            assert got["messages"][0]["payload"]["aps"]["alert"] == {
                "title": "Salut",
                "body": "Soldes",
            }
        for install in (*opted_out, *debug):
            got = sim_control.get(f"/_sim/apns/tokens/{install.push_token}")
            assert got.status_code == 404 or got.json()["count"] == 0

        described = (await get(api, ios_app, token)).json()
        assert described["state"] == "completed"
        assert described["progress"] == {"targeted": 5, "sent": 5, "resent": 0, "errors": 0}
        stats = await api.get(
            f"/1.1/{ios_app.api_key}/campaigns/stats/{token}", headers=ios_app.headers()
        )
        assert stats.status_code == 200
        detail = stats.json()["detail"]
        assert len(detail) == 1
        # The UTC day of the sends (either side of midnight, if the test runs across it).
        assert detail[0]["date"] in {started.strftime("%Y-%m-%d"), today()}
        assert (detail[0]["sent"], detail[0]["sent_optins"], detail[0]["errors"]) == (5, 5, 0)
        assert "versions" not in detail[0]

    async def test_a_draft_is_never_started(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await add_installs(runtime, ios_app, 2)
        token = await created(api, ios_app, live=False)
        await scheduler(runtime, Clock(T + timedelta(days=1))).tick()
        assert await runs_of(runtime, token) == []


class TestExactlyOnce:
    async def test_two_schedulers_write_each_install_once(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, held_queue: JobQueue
    ) -> None:
        installs = await add_installs(runtime, ios_app, 100)
        token = await created(api, ios_app, push_time="2030-06-01T10:00:00")
        clock = Clock(T)
        first = scheduler(runtime, clock, queue=held_queue, batch_size=4)
        second = scheduler(runtime, clock, queue=held_queue, batch_size=4)
        await asyncio.gather(first.tick(), second.tick(), first.tick(), second.tick())
        assert len(await runs_of(runtime, token)) == 1
        assert await reached(runtime, token) == Counter({i.id: 1 for i in installs})

    async def test_a_run_taken_over_resumes_at_its_cursor(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, held_queue: JobQueue
    ) -> None:
        installs = await add_installs(runtime, ios_app, 100)
        token = await created(api, ios_app, push_time="2030-06-01T10:00:00")
        clock = Clock(T)
        await scheduler(runtime, clock, queue=held_queue, batch_size=4).tick()
        # Rewind to what a process that died after its first page (40 installs) leaves behind:
        # those batches, its cursor, a lease that has run out.
        run = (await runs_of(runtime, token))[0]
        cut = sorted(i.id for i in installs)[39]
        async with transaction(runtime.sessions) as session:
            later = [
                batch.id
                for batch, _ in await batches_of(runtime, token)
                if batch.recipients["installations"][0] > cut
            ]
            await session.execute(delete(DeliveryBatch).where(DeliveryBatch.id.in_(later)))
            await session.execute(
                update(CampaignRun)
                .where(CampaignRun.id == run.id)
                .values(state="fanning_out", cursor=cut, lease_until=T - timedelta(seconds=1))
            )
        assert sum((await reached(runtime, token)).values()) == 40

        await scheduler(runtime, clock, queue=held_queue, batch_size=4).tick()
        assert await reached(runtime, token) == Counter({i.id: 1 for i in installs})

    async def test_a_live_lease_keeps_other_processes_off(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, held_queue: JobQueue
    ) -> None:
        await add_installs(runtime, ios_app, 10)
        token = await created(api, ios_app, push_time="2030-06-01T10:00:00")
        clock = Clock(T)
        await scheduler(runtime, clock, queue=held_queue).tick()
        run = (await runs_of(runtime, token))[0]
        async with transaction(runtime.sessions) as session:
            await session.execute(
                update(CampaignRun)
                .where(CampaignRun.id == run.id)
                .values(state="fanning_out", cursor=0, lease_until=T + timedelta(minutes=1))
            )
        await scheduler(runtime, clock, queue=held_queue).tick()
        assert set((await reached(runtime, token)).values()) == {1}

    async def test_a_live_fan_out_held_up_by_the_database_keeps_its_run(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, held_queue: JobQueue
    ) -> None:
        """The fan-out's lease is short (8 s by default, so that a dead process's run resumes
        within seconds, as its delivery batches do) and so is renewed while its process lives,
        even during a page that waits on the database: here, on a lock of the installations
        table. Another scheduler then leaves the run be."""
        if runtime.settings.is_sqlite:
            pytest.skip("one process on SQLite: no other one to take the run over meanwhile")
        installs = await add_installs(runtime, ios_app, 10)
        token = await created(api, ios_app, push_time="2030-06-01T10:00:00")
        clock = Clock(T)
        # A quarter-second lease (renewed every 62 ms) in the test clock's seconds.
        live = scheduler(runtime, clock, queue=held_queue, fan_out_lease_seconds=0.25)
        other = scheduler(runtime, clock, queue=held_queue, fan_out_lease_seconds=0.25)

        async def lease_until() -> datetime | None:
            return (await runs_of(runtime, token))[0].lease_until

        locked, free = asyncio.Event(), asyncio.Event()

        async def hold_installations() -> None:
            # In a task of its own: this test's task opens sessions meanwhile.
            async with transaction(runtime.sessions) as blocker:
                await blocker.execute(text("LOCK TABLE installations IN ACCESS EXCLUSIVE MODE"))
                locked.set()
                await free.wait()

        holder = asyncio.create_task(hold_installations())
        try:
            await locked.wait()
            await live.tick(wait=False)
            await eventually(lambda: _is_after(lease_until(), T), what="the fan-out took its run")
            clock.advance(timedelta(seconds=1))  # its first lease ran out meanwhile
            await eventually(
                lambda: _is_after(lease_until(), clock.now),
                what="the live fan-out renewed its lease during the held-up page",
            )
            owner = (await runs_of(runtime, token))[0].lease_owner
            # It finds no run to take (one it took would wait on the table, and time out).
            await asyncio.wait_for(other.tick(), 10)
            assert (await runs_of(runtime, token))[0].lease_owner == owner
            free.set()
            await holder
            await eventually(
                lambda: _reached_all(runtime, token, len(installs)),
                what="the fan-out went on once the table was free",
            )
        finally:
            free.set()
            await holder
            await live.aclose()
            await other.aclose()
        assert await reached(runtime, token) == Counter({i.id: 1 for i in installs})


async def _is_after(until: Awaitable[datetime | None], moment: datetime) -> bool:
    found = await until
    return found is not None and found > moment


async def _reached_all(runtime: Runtime, token: str, count: int) -> bool:
    return len(await reached(runtime, token)) == count


class TestDowntime:
    async def test_due_while_down_is_sent_when_back(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        installs = await add_installs(runtime, ios_app, 2)
        token = await created(api, ios_app, push_time="2030-06-01T10:00:00")
        await scheduler(runtime, Clock(T + timedelta(hours=3))).tick()
        assert await reached(runtime, token) == Counter({i.id: 1 for i in installs})

    async def test_past_its_time_to_live_it_is_not_sent(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await add_installs(runtime, ios_app, 2)
        token = await created(api, ios_app, push_time="2030-06-01T10:00:00", time_to_live=3600)
        await scheduler(runtime, Clock(T + timedelta(hours=1, seconds=1))).tick()
        assert [run.state for run in await runs_of(runtime, token)] == ["expired"]
        assert await batches_of(runtime, token) == []
        assert (await campaign_state(runtime, token)).state == "completed"


class TestStop:
    async def test_live_false_mid_send_closes_what_is_not_delivered(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        held_queue: JobQueue,
    ) -> None:
        await add_installs(runtime, ios_app, 20)
        token = await created(api, ios_app, push_time="2030-06-01T10:00:00")
        clock = Clock(T)
        await scheduler(runtime, clock, queue=held_queue, batch_size=4).tick()
        response = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/update/{token}",
            headers=ios_app.headers(),
            json={"live": False},
        )
        assert response.status_code == 200
        batches = await batches_of(runtime, token)
        assert batches
        assert all(batch.status == BatchStatus.DONE.value for batch, _ in batches)
        assert {batch.last_reason for batch, _ in batches} == {"Stopped"}
        assert [run.state for run in await runs_of(runtime, token)] == ["stopped"]
        assert (await get(api, ios_app, token)).json()["state"] == "stopped"
        # Stopped for good: a later tick starts nothing, and it cannot be set live again.
        await scheduler(runtime, Clock(T + timedelta(days=1)), queue=held_queue).tick()
        assert len(await runs_of(runtime, token)) == 1
        again = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/update/{token}",
            headers=ios_app.headers(),
            json={"live": True},
        )
        assert again.status_code == 400


class TestLocalTime:
    async def test_each_zone_receives_it_at_its_own_wall_clock_time(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        tokyo = await add_installs(runtime, ios_app, 2, timezone="Asia/Tokyo")  # UTC+9
        paris = await add_installs(runtime, ios_app, 2, timezone="Europe/Paris")  # UTC+2 in June
        new_york = await add_installs(runtime, ios_app, 2, timezone="America/New_York")  # UTC-4
        unknown = await add_installs(runtime, ios_app, 1)  # the app's default zone: UTC
        token = await created(api, ios_app, push_time=None, local_push_time="2030-06-01T09:00:00")
        expected: Counter[int] = Counter()
        moments = [
            (datetime(2030, 5, 31, 23, 59, tzinfo=UTC), []),
            (datetime(2030, 6, 1, 0, 0, tzinfo=UTC), tokyo),
            (datetime(2030, 6, 1, 6, 59, tzinfo=UTC), []),
            (datetime(2030, 6, 1, 7, 0, tzinfo=UTC), paris),
            (datetime(2030, 6, 1, 9, 0, tzinfo=UTC), unknown),
            (datetime(2030, 6, 1, 13, 0, tzinfo=UTC), new_york),
        ]
        for moment, newly_due in moments:
            await scheduler(runtime, Clock(moment)).tick()
            expected.update(i.id for i in newly_due)
            assert await reached(runtime, token) == expected, moment
        assert [run.state for run in await runs_of(runtime, token)] == ["fanning_out"]
        await scheduler(runtime, Clock(datetime(2030, 6, 1, 21, 0, tzinfo=UTC))).tick()
        await wait_delivered(runtime, token)
        await scheduler(runtime, Clock(datetime(2030, 6, 1, 21, 0, tzinfo=UTC))).tick()
        assert [run.state for run in await runs_of(runtime, token)] == ["done"]
        assert (await campaign_state(runtime, token)).state == "completed"

    async def test_a_scheduler_started_just_after_boot_reads_the_zones(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        # Monotonic time 0, as on a machine booted a moment ago: taking "never read" for "read
        # at monotonic 0" trusted an empty set of zones for 300 s, and nothing went out.
        tokyo = await add_installs(runtime, ios_app, 2, timezone="Asia/Tokyo")  # UTC+9
        token = await created(api, ios_app, push_time=None, local_push_time="2030-06-01T09:00:00")
        clock = Clock(datetime(2030, 6, 1, 6, 59, tzinfo=UTC), monotonic=0.0)
        ticking = scheduler(runtime, clock)
        await ticking.tick()
        assert await reached(runtime, token) == Counter(i.id for i in tokyo)
        # Read once, trusted 300 s: a zone that appears meanwhile waits for the next read.
        paris = await add_installs(runtime, ios_app, 1, timezone="Europe/Paris")  # UTC+2
        clock.now = datetime(2030, 6, 1, 7, 0, tzinfo=UTC)  # 09:00 in Paris, 60 s later
        await ticking.tick()
        assert await reached(runtime, token) == Counter(i.id for i in tokyo)
        clock.advance(timedelta(seconds=241))
        await ticking.tick()
        assert await reached(runtime, token) == Counter(i.id for i in tokyo + paris)


class TestRecurrence:
    async def test_daily_three_times_then_completed(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        sim_control: httpx.Client,
    ) -> None:
        installs = await add_installs(runtime, ios_app, 3)
        token = await created(
            api,
            ios_app,
            push_time="2030-06-01T10:00:00",
            recurrence={"repeat_unit": "DAILY", "repeat_frequency": 2, "occurrences": 3},
        )
        for day in (0, 2, 4):
            clock = Clock(T + timedelta(days=day))
            await scheduler(runtime, clock).tick()
            await wait_delivered(runtime, token)
            await scheduler(runtime, clock).tick()
            campaign = await campaign_state(runtime, token)
            if day < 4:
                assert campaign.state == "scheduled"
                assert campaign.next_run_at == T + timedelta(days=day + 2)
                # Not again before the next occurrence.
                await scheduler(runtime, Clock(T + timedelta(days=day + 1))).tick()
        assert campaign.state == "completed"
        assert [run.occurrence for run in await runs_of(runtime, token)] == [0, 1, 2]
        for install in installs:
            assert sim_control.get(f"/_sim/apns/tokens/{install.push_token}").json()["count"] == 3

    async def test_capping_limits_how_often_one_install_receives_it(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        early = await add_installs(runtime, ios_app, 2)
        token = await created(
            api,
            ios_app,
            push_time="2030-06-01T10:00:00",
            recurrence={"repeat_unit": "WEEKLY", "occurrences": 3},
            capping=2,
        )
        late: list[Installation] = []
        for week in range(3):
            if week == 2:
                late = await add_installs(runtime, ios_app, 1)
            clock = Clock(T + timedelta(weeks=week))
            await scheduler(runtime, clock).tick()
            await wait_delivered(runtime, token)
            await scheduler(runtime, clock).tick()
        expected = Counter({i.id: 2 for i in early}) + Counter({i.id: 1 for i in late})
        assert await reached(runtime, token) == expected
        assert (await campaign_state(runtime, token)).state == "completed"

    async def test_occurrences_missed_while_down_are_sent_once(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        installs = await add_installs(runtime, ios_app, 2)
        token = await created(
            api,
            ios_app,
            push_time="2030-06-01T10:00:00",
            recurrence={"repeat_unit": "DAILY"},
        )
        # Back three days and an hour late: only the latest occurrence due goes out.
        clock = Clock(T + timedelta(days=3, hours=1))
        await scheduler(runtime, clock).tick()
        assert [run.occurrence for run in await runs_of(runtime, token)] == [3]
        assert await reached(runtime, token) == Counter({i.id: 1 for i in installs})
        assert (await campaign_state(runtime, token)).next_run_at == T + timedelta(days=4)

    async def test_daily_local_time_runs_overlap_instead_of_starting_late(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await add_installs(runtime, ios_app, 1, timezone="Pacific/Kiritimati")  # UTC+14
        await add_installs(runtime, ios_app, 1, timezone="Pacific/Pago_Pago")  # UTC-11
        token = await created(
            api,
            ios_app,
            push_time=None,
            local_push_time="2030-06-01T09:00:00",
            recurrence={"repeat_unit": "DAILY", "occurrences": 2},
        )
        first_start = datetime(2030, 5, 31, 19, 0, tzinfo=UTC)  # 09:00 on Kiritimati
        await scheduler(runtime, Clock(first_start)).tick()
        campaign = await campaign_state(runtime, token)
        assert campaign.next_run_at == first_start + timedelta(days=1)
        # A day later the first run still waits for Pago Pago (09:00 there is 20:00 UTC)...
        await scheduler(runtime, Clock(first_start + timedelta(days=1))).tick()
        runs = await runs_of(runtime, token)
        # ...and the second has started on time anyway.
        assert [(r.occurrence, r.state) for r in runs] == [(0, "fanning_out"), (1, "fanning_out")]

    async def test_an_update_while_a_run_goes_on_applies_to_the_next_occurrence(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        tokyo = await add_installs(runtime, ios_app, 1, timezone="Asia/Tokyo")
        paris = await add_installs(runtime, ios_app, 1, timezone="Europe/Paris")
        token = await created(api, ios_app, push_time=None, local_push_time="2030-06-01T09:00:00")
        await scheduler(runtime, Clock(datetime(2030, 6, 1, 0, 0, tzinfo=UTC))).tick()
        response = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/update/{token}",
            headers=ios_app.headers(),
            json={
                "messages": [
                    {"language": "en", "body": "A", "version": "a"},
                    {"language": "en", "body": "B", "version": "b"},
                ],
                "targeting": {"regions": ["JP"]},
            },
        )
        assert response.status_code == 200, response.text
        await scheduler(runtime, Clock(datetime(2030, 6, 1, 7, 0, tzinfo=UTC))).tick()
        assert await reached(runtime, token) == Counter({tokyo[0].id: 1, paris[0].id: 1})
        assert {send.version for _, send in await batches_of(runtime, token)} == {None}

    def test_monthly_keeps_the_end_of_month(self) -> None:
        body = CampaignBody.model_validate(
            {
                "name": "monthly",
                "live": True,
                "push_time": "2030-01-31T08:00:00",
                "recurrence": {"repeat_unit": "MONTHLY", "end_date": "2030-04-30T08:00:00"},
                "messages": [{"language": "en", "body": "x"}],
            }
        )
        now = datetime(2030, 1, 1, tzinfo=UTC)
        assert [occurrence_time(body, i, now=now) for i in range(5)] == [
            datetime(2030, 1, 31, 8, tzinfo=UTC),
            datetime(2030, 2, 28, 8, tzinfo=UTC),
            datetime(2030, 3, 31, 8, tzinfo=UTC),
            datetime(2030, 4, 30, 8, tzinfo=UTC),
            None,
        ]


class TestAbVersions:
    @pytest.mark.parametrize(
        "shares",
        [[("a", 50), ("b", 50)], [("a", 30), ("b", 70)], [("a", 34), ("b", 33), ("c", 33)]],
    )
    def test_the_split_is_within_one_percent_on_100000_installs(
        self, shares: list[tuple[str | None, int]]
    ) -> None:
        for seed in (0, 0x5EED, 0xFFFFFFFF):
            counts = Counter(version_of(i, seed, shares) for i in range(1, 100_001))
            for version, share in shares:
                assert abs(counts[version] / 100_000 - share / 100) < 0.01, (seed, counts)

    async def test_the_fan_out_splits_100000_installs_within_one_percent(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, held_queue: JobQueue
    ) -> None:
        async with transaction(runtime.sessions) as session:
            await session.execute(
                insert(Installation),
                [
                    {
                        "app_id": ios_app.app_id,
                        "install_id": f"ab-{n}",
                        "push_token": f"{n:064x}",
                        "push_optin": True,
                    }
                    for n in range(100_000)
                ],
            )
        token = await created(
            api,
            ios_app,
            messages=[
                {"language": "en", "body": "A", "version": "a"},
                {"language": "en", "body": "B", "version": "b"},
            ],
            version_split={"a": 30, "b": 70},
        )
        await scheduler(runtime, Clock(T), queue=held_queue).tick()
        by_version: Counter[str | None] = Counter()
        for batch, send in await batches_of(runtime, token):
            by_version[send.version] += len(batch.recipients["installations"])
        assert sum(by_version.values()) == 100_000
        assert abs(by_version["a"] / 100_000 - 0.30) < 0.01, by_version
        # Stopped rather than left for the session's workers to deliver 100,000 pushes.
        response = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/update/{token}",
            headers=ios_app.headers(),
            json={"live": False},
        )
        assert response.status_code == 200

    async def test_each_version_has_its_send_and_its_stats(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        installs = await add_installs(runtime, ios_app, 40)
        token = await send_now(
            api,
            ios_app,
            runtime,
            messages=[
                {"language": "en", "body": "Version A", "version": "a"},
                {"language": "en", "body": "Version B", "version": "b"},
            ],
        )
        by_version: Counter[str | None] = Counter()
        for batch, send in await batches_of(runtime, token):
            assert send.content["messages"]["en"]["body"] == f"Version {send.version.upper()}"
            by_version[send.version] += len(batch.recipients["installations"])
        assert set(by_version) == {"a", "b"}
        assert sum(by_version.values()) == len(installs)

        stats = await api.get(
            f"/1.1/{ios_app.api_key}/campaigns/stats/{token}", headers=ios_app.headers()
        )
        day = stats.json()["detail"][0]
        assert day["sent"] == 40
        assert {v: s["sent"] for v, s in day["versions"].items()} == dict(by_version)


class TestPersonalisation:
    async def test_texts_use_each_users_attributes_with_defaults(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        sim_control: httpx.Client,
    ) -> None:
        alice = (await add_installs(runtime, ios_app, 1, custom_id="alice"))[0]
        bob = (await add_installs(runtime, ios_app, 1, custom_id="bob"))[0]
        anonymous = (await add_installs(runtime, ios_app, 1))[0]
        response = await api.post(
            f"/1.0/{ios_app.api_key}/data/users/alice",
            headers=ios_app.headers(),
            json={"values": {"u.firstname": "Alice", "u.points": 42}},
        )
        assert response.status_code in (200, 202), response.text
        await send_now(
            api,
            ios_app,
            runtime,
            deeplink="app://points/{{ c.points | default(0) }}",
            messages=[
                {
                    "language": "en",
                    "title": "Hello {{ c.firstname | default('there') }}",
                    "body": "You have {{ c.points }} points{{ c.missing.deeper }}",
                }
            ],
        )

        def shown(install: Installation) -> tuple[str, str, str]:
            got = sim_control.get(f"/_sim/apns/tokens/{install.push_token}").json()
            payload = got["messages"][-1]["payload"]
            alert = payload["aps"]["alert"]
            return alert["title"], alert["body"], payload["com.batch"]["l"]

        assert shown(alice) == ("Hello Alice", "You have 42 points", "app://points/42")
        assert shown(bob) == ("Hello there", "You have  points", "app://points/0")
        assert shown(anonymous) == ("Hello there", "You have  points", "app://points/0")

    async def test_a_template_that_does_not_compile_is_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await create(
            api,
            ios_app,
            {
                "name": "broken",
                "live": True,
                "push_time": "now",
                "messages": [{"language": "en", "body": "Hi {{ c.firstname "}],
            },
        )
        assert "messages.0.body" in error(response, 400, 31)


class TestOpens:
    async def test_direct_influenced_and_reengaged_opens(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        sim_control: httpx.Client,
    ) -> None:
        tapped, influenced, earlier, regular, lapsed = await add_installs(runtime, ios_app, 5)
        sdk = f"/sdk/v1/{ios_app.api_key}/installations"

        async def app_open(install: Installation, ago: timedelta | None = None) -> None:
            body = {} if ago is None else {"occurred_at": (datetime.now(UTC) - ago).isoformat()}
            response = await api.post(f"{sdk}/{install.install_id}/app-opens", json=body)
            assert response.status_code == 202, response.text

        await app_open(earlier, timedelta(hours=1))  # before the send only: not influenced
        await app_open(regular, timedelta(days=1))  # a regular user: not re-engaged
        await app_open(lapsed, timedelta(days=40))  # inactive for 40 days: re-engaged
        token = await send_now(api, ios_app, runtime)

        payload = sim_control.get(f"/_sim/apns/tokens/{tapped.push_token}").json()
        send_id = payload["messages"][-1]["payload"]["com.batch"]["i"]
        response = await api.post(f"{sdk}/{tapped.install_id}/opens", json={"send_id": send_id})
        assert response.status_code == 202
        for install in (tapped, influenced, regular, lapsed):
            await app_open(install)

        stats = await api.get(
            f"/1.1/{ios_app.api_key}/campaigns/stats/{token}", headers=ios_app.headers()
        )
        detail = stats.json()["detail"]
        totals = {
            field: sum(day[field] for day in detail)
            for field in ("sent", "direct_open", "influenced_open", "reengaged")
        }
        assert totals == {"sent": 5, "direct_open": 1, "influenced_open": 3, "reengaged": 3}
