"""Retention of the event log (docs/retention.md): expired days dropped (push and in-app
events' day partitions on PostgreSQL, bounded DELETEs on SQLite and for tracked events), the
days statistics or exports still need kept, the counts folded from the log kept, partitions
created ahead, and a row of any time stored.

Each test has a database of its own, migrated up to the partitioning with rows already in it
(as a production database is), so that the rows spread over day partitions as the migration
places them; the clock is a test clock that starts at today's date (the migration reads the
real one to place its partitions)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from clarion.apps.models import App, Company
from clarion.config import Settings
from clarion.db import create_engine, create_sessionmaker, transaction
from clarion.events.models import InAppEvent, PushEvent, PushEventCount, PushEventKind, TrackedEvent
from clarion.events.service import push_event_row, record_push_events
from clarion.exports.models import ExportDestination, ExportKind, ExportRun, ExportStatus
from clarion.migrate import alembic_config
from clarion.retention.partitions import Upkeep, day_name, future_name, layout, past_name
from clarion.retention.tasks import PARTITION_DAYS_AHEAD, EventRetention
from clarion.runtime import Runtime
from tests.conftest import ClientApp, empty_database
from tests.support.clock import Clock

BEFORE_PARTITIONS = "3f6a9d2c7b41"
# Days back (from today) of the rows written before the migration.
AGES = (0, 2, 5, 50, 95, 120)
# And a tracked event older than automation statistics read (396 days): tracked events are not
# partitioned, so it costs no day partitions.
TRACKED_EXPIRED = 400


@dataclass
class Database:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    url: str
    app_id: int
    today: date

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def at(self, days_ago: int) -> datetime:
        return datetime.combine(self.today, datetime.min.time(), tzinfo=UTC).replace(
            hour=12
        ) - timedelta(days=days_ago)

    async def ages(
        self, model: type[PushEvent] | type[InAppEvent] | type[TrackedEvent]
    ) -> list[int]:
        async with self.sessions() as session:
            times = await session.scalars(select(model.occurred_at))
            return sorted(((self.at(0) - at).days for at in times), reverse=True)

    async def partition_of(self, table: str, row_id: int) -> str:
        async with self.sessions() as session:
            found = await session.scalar(
                text(f"SELECT tableoid::regclass::text FROM {table} WHERE id = :id"),
                {"id": row_id},
            )
            return str(found)


@pytest.fixture
async def database(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A database at the revision before the partitioning with an app and, in each event
    table, one row per age of AGES (push events of a campaign, counted; tracked events one more,
    TRACKED_EXPIRED), then migrated."""
    with empty_database(backend, tmp_path) as url:
        config = alembic_config(url)
        command.upgrade(config, BEFORE_PARTITIONS)
        engine = create_engine(url, pool_size=2)
        sessions = create_sessionmaker(engine)
        today = datetime.now(UTC).date()
        db = Database(engine, sessions, url, 0, today)
        async with transaction(sessions) as session:
            company = Company(name="c", rest_key_hash="r")
            session.add(company)
            await session.flush()
            app = App(
                company_id=company.id, name="a", platform="ios", live_key_hash="l", dev_key_hash="d"
            )
            session.add(app)
            await session.flush()
            db.app_id = app.id
            rows = [
                push_event_row(
                    app_id=app.id,
                    kind=PushEventKind.SENT,
                    occurred_at=db.at(age),
                    platform="ios",
                    campaign_token="camp",
                    send_token="send",
                )
                for age in AGES
            ]
            await record_push_events(session, rows)
            await session.execute(
                insert(InAppEvent),
                [
                    {
                        "app_id": app.id,
                        "kind": "inapp_shown",
                        "occurred_at": db.at(age),
                        "platform": "ios",
                        "campaign_id": "c",
                    }
                    for age in AGES
                ],
            )
            await session.execute(
                insert(TrackedEvent),
                [
                    {"app_id": app.id, "occurred_at": db.at(age), "name": "e"}
                    for age in (*AGES, TRACKED_EXPIRED)
                ],
            )
        command.upgrade(config, "head")
        try:
            yield db
        finally:
            await engine.dispose()


def retention(db: Database, clock: Clock, tmp_path: Path, **days: Any) -> EventRetention:
    settings = Settings(database_url=db.url, var_dir=tmp_path, **days)
    return EventRetention(db.engine, db.sessions, settings, clock=clock, sqlite_batch=2)


async def export_destination(db: Database, *, first_day: date, exported: list[date]) -> int:
    """An in-app events destination that produced `exported` and no other day."""
    async with transaction(db.sessions) as session:
        destination = ExportDestination(
            app_id=db.app_id,
            name="lake",
            kind=ExportKind.INAPP_EVENTS.value,
            url="file:///nowhere",
            file_name="{date}.csv",
            id_columns=["install_id"],
            first_day=first_day,
        )
        session.add(destination)
        await session.flush()
        for day in exported:
            session.add(
                ExportRun(destination_id=destination.id, day=day, status=ExportStatus.SUCCEEDED)
            )
        return destination.id


async def test_old_days_go_and_the_days_still_read_stay(database: Database, tmp_path: Path) -> None:
    """Push events: 30 days asked, but statistics read 93 (attributed opens over 90 settled
    days): 95 and 120 days old go, 50 stays. In-app events: 1 day asked, but the daily export
    has not produced the day 5 days ago: that day and the later ones stay, older ones go.
    Tracked events: automation statistics read 396 days: the one 400 days old goes, the others
    stay. The counts of the dropped push events stay."""
    db = database
    clock = Clock(db.at(0))
    days = range(10, 5, -1)
    await export_destination(
        db, first_day=db.today - timedelta(days=10), exported=[db.at(d).date() for d in days]
    )
    async with db.sessions() as session:
        counts_before = await session.scalar(select(func.sum(PushEventCount.count)))
    task = retention(
        db,
        clock,
        tmp_path,
        push_events_retention_days=30,
        inapp_events_retention_days=1,
        tracked_events_retention_days=30,
    )
    done = await task.run()
    assert await db.ages(PushEvent) == [50, 5, 2, 0]
    assert await db.ages(InAppEvent) == [5, 2, 0]
    assert await db.ages(TrackedEvent) == list(AGES[::-1])
    async with db.sessions() as session:
        assert await session.scalar(select(func.sum(PushEventCount.count))) == counts_before == 6
    if db.postgres:
        assert isinstance(done, dict)
        push = done["push_events"]
        assert isinstance(push, Upkeep)
        # Every day before the first kept (93 days back) went, the oldest row's first.
        first_kept = db.today - timedelta(days=93)
        assert push.dropped == [db.today - timedelta(days=n) for n in range(120, 93, -1)]
        async with db.engine.connect() as connection:
            push_layout = await layout(connection, "push_events")
        assert push_layout.days[0] == first_kept
        assert push_layout.past == (past_name("push_events", first_kept), first_kept)

    # The export catches up: the in-app days then go down to the one day asked.
    async with transaction(db.sessions) as session:
        await session.execute(update(ExportRun).values(status=ExportStatus.SUCCEEDED.value))
        destination = await session.scalar(select(ExportDestination.id))
        for n in range(5, 0, -1):
            session.add(
                ExportRun(
                    destination_id=destination, day=db.at(n).date(), status=ExportStatus.SUCCEEDED
                )
            )
    clock.advance(timedelta(hours=3))  # yesterday's file is due (2 h after its end) and done
    await task.run()
    assert await db.ages(InAppEvent) == [0]
    assert await db.ages(PushEvent) == [50, 5, 2, 0]


async def test_a_day_no_export_produced_yet_stays(database: Database, tmp_path: Path) -> None:
    """A destination created 50 days ago that never produced anything (its storage down, say)
    keeps the days its backfill still reaches (31), even with 1 day of retention."""
    db = database
    clock = Clock(db.at(0))
    await export_destination(db, first_day=db.today - timedelta(days=50), exported=[])
    await retention(db, clock, tmp_path, inapp_events_retention_days=1).run()
    assert await db.ages(InAppEvent) == [5, 2, 0]


async def test_retention_zero_keeps_everything(database: Database, tmp_path: Path) -> None:
    db = database
    task = retention(
        db,
        Clock(db.at(0)),
        tmp_path,
        push_events_retention_days=0,
        inapp_events_retention_days=0,
        tracked_events_retention_days=0,
    )
    await task.run()
    for model in (PushEvent, InAppEvent):
        assert await db.ages(model) == list(AGES[::-1])
    assert await db.ages(TrackedEvent) == [TRACKED_EXPIRED, *AGES[::-1]]


async def test_partitions_are_made_ahead_and_rows_of_any_time_land(
    database: Database, tmp_path: Path
) -> None:
    """PostgreSQL: the migration made the days up to a week ahead; a row later than those goes
        to `future`, one older than every day to `past`; three days on, a pass has made three more
        days and moved the row of `future` into its own. SQLite: the rows are simply stored. (The
    older row is older than the first day partition, within the 400 days kept.)"""
    db = database
    clock = Clock(db.at(0))
    ahead = db.today + timedelta(days=PARTITION_DAYS_AHEAD)
    later, older = db.at(-(PARTITION_DAYS_AHEAD + 2)), db.at(200)
    async with transaction(db.sessions) as session:
        await record_push_events(
            session,
            [
                push_event_row(
                    app_id=db.app_id, kind=PushEventKind.SENT, occurred_at=at, platform="ios"
                )
                for at in (later, older)
            ],
        )
        ids = list(
            await session.scalars(select(PushEvent.id).order_by(PushEvent.id.desc()).limit(2))
        )
    later_id, older_id = sorted(ids)
    if db.postgres:
        assert await db.partition_of("push_events", later_id) == future_name(
            "push_events", ahead + timedelta(days=1)
        )
        assert (await db.partition_of("push_events", older_id)).startswith("push_events_past_")
    clock.advance(timedelta(days=3))
    done = await retention(db, clock, tmp_path).run()
    async with db.sessions() as session:
        stored = sorted(await session.scalars(select(PushEvent.occurred_at)))
    assert later in stored
    assert older in stored
    if not db.postgres:
        return
    assert isinstance(done, dict)
    upkeep = done["push_events"]
    assert isinstance(upkeep, Upkeep)
    assert upkeep.created == [ahead + timedelta(days=n) for n in (1, 2, 3)]
    assert upkeep.moved == 1
    assert await db.partition_of("push_events", later_id) == day_name("push_events", later.date())
    for table in ("push_events", "inapp_events"):
        async with db.engine.connect() as connection:
            found = await layout(connection, table)
        assert found.days[-1] == ahead + timedelta(days=3)
        assert found.future is not None
        assert found.future[1] == ahead + timedelta(days=4)
    # A pass with nothing to do changes nothing.
    again = await retention(db, clock, tmp_path).run()
    assert again == {"push_events": Upkeep(), "inapp_events": Upkeep(), "tracked_events": 0}


async def test_a_trigger_event_of_23_hours_ago_is_stored(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    """Batch's rule takes a server event up to 24 hours old: its day has a partition (the
    migration makes yesterday's, and the days ahead become today's and yesterday's)."""
    at = datetime.now(UTC) - timedelta(hours=23)
    answer = await api.post(
        f"/1.0/{ios_app.api_key}/events/users/retention-user",
        headers=ios_app.headers(),
        json={"events": [{"name": "ue.late", "time": at.isoformat()}]},
    )
    assert answer.status_code == 202, answer.text
    async with runtime.sessions() as session:
        stored = await session.scalar(
            select(TrackedEvent.occurred_at).where(TrackedEvent.custom_id == "retention-user")
        )
    assert stored is not None
    assert abs((stored - at).total_seconds()) < 1


async def test_day_partitions_carry_the_lean_push_event_indexes(
    database: Database, tmp_path: Path
) -> None:
    """Decision 0046: on every day of push events, migrated or created ahead since, a campaign's
    rows only are indexed by campaign, and an install by a hash of its id; the parent's
    indexes are valid (each partition's built and attached)."""
    if not database.postgres:
        pytest.skip("SQLite's tables have no partitions")
    clock = Clock(datetime.combine(database.today, datetime.min.time(), tzinfo=UTC))
    clock.advance(timedelta(days=3))  # three days ahead to create
    await retention(database, clock, tmp_path).run()
    migrated = day_name("push_events", database.today - timedelta(days=2))
    created = day_name("push_events", database.today + timedelta(days=PARTITION_DAYS_AHEAD + 3))
    async with database.sessions() as session:
        invalid = await session.scalar(
            text(
                "SELECT count(*) FROM pg_index WHERE NOT indisvalid"
                " AND indrelid = 'push_events'::regclass"
            )
        )
        indexes = {
            partition: sorted(
                definition.split(" USING ", 1)[1]
                for definition in await session.scalars(
                    text("SELECT indexdef FROM pg_indexes WHERE tablename = :table"),
                    {"table": partition},
                )
            )
            for partition in (migrated, created)
        }
    assert invalid == 0
    expected = [
        "btree (app_id, group_id, kind, occurred_at) WHERE (group_id IS NOT NULL)",
        "btree (app_id, occurred_at)",
        "btree (campaign_token, kind, occurred_at) WHERE (campaign_token IS NOT NULL)",
        "btree (id, occurred_at)",
        "btree (send_token)",
        "hash (install_id)",
    ]
    assert indexes == {migrated: expected, created: expected}
