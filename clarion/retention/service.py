"""Which days of the event log are kept (docs/retention.md, decision 0041), and the way of
dropping the others where there are no day partitions to drop (SQLite, and tracked_events on
PostgreSQL): a bounded DELETE per transaction, oldest first.

A day is kept while any of these still reads it: the retention setting
(CLARION_*_EVENTS_RETENTION_DAYS), the statistics and dashboard pages that read the log itself
(not the counts folded from it, which stay), and the daily exports and Export API requests not
produced yet. So `keep_from` is the earliest of the days they name; each is a day boundary, and
every row before it may go.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.models import App
from clarion.config import Settings
from clarion.db import Base, transaction
from clarion.events.models import InAppEvent, PushEvent, TrackedEvent
from clarion.exports.models import ExportKind
from clarion.exports.service import needed_from
from clarion.stats.automations import MAX_STATS_DAYS
from clarion.stats.tasks import LOOKBACK_DAYS

# Rows deleted per transaction on SQLite, which has one connection that every API call and
# worker shares (decision 0006), so a writer may wait for one batch: 1,000 push events (5
# indexes) took 11-40 ms on this loaded 2-core machine, 2,000 took 25-53 ms, 4,000 42-246 ms.
SQLITE_BATCH = 1_000
# On PostgreSQL a DELETE of old rows makes no writer wait (it locks the rows it deletes, which
# no one writes); 10,000 per transaction keeps each short, as the capping purge's (~190 ms).
POSTGRES_BATCH = 10_000

# The statistics upkeep stores a day's attributed opens once the day has settled, up to
# LOOKBACK_DAYS back, matching its opens with the sends of the day before (INFLUENCE_WINDOW):
# push events are read that far back, plus those two days and today.
_PUSH_READ_DAYS = LOOKBACK_DAYS + 3
# Automation statistics count the entries of up to MAX_STATS_DAYS and their conversions, a
# tracked event within `within_hours` (at most 720: 30 days) of the push.
_TRACKED_READ_DAYS = MAX_STATS_DAYS + 30 + 1


@dataclass(frozen=True, slots=True)
class EventLog:
    """One table of the event log and who reads it besides the setting."""

    table: str
    model: type[Base]
    setting: Callable[[Settings], int]  # days kept; 0 keeps every day
    read_days: int  # how far back statistics and the dashboard read it
    export: ExportKind | None  # the daily exports that read it
    # Partitioned by day on PostgreSQL (decision 0041); otherwise trimmed by DELETEs there too.
    partitioned: bool


EVENT_LOGS = (
    EventLog(
        "push_events",
        PushEvent,
        lambda settings: settings.push_events_retention_days,
        _PUSH_READ_DAYS,
        ExportKind.PUSH_EVENTS,
        partitioned=True,
    ),
    # In-app statistics (clarion.inapp) add up a campaign's events since it began: past the
    # retention, they count the days kept (docs/retention.md).
    EventLog(
        "inapp_events",
        InAppEvent,
        lambda settings: settings.inapp_events_retention_days,
        0,
        ExportKind.INAPP_EVENTS,
        partitioned=True,
    ),
    # Not partitioned: targeting (`e.`, `ue.`), the in-app "last time" criterion and the
    # dashboard's user lookup read it per installation or user with no time range, and each such
    # probe would visit every day's partition: targeting's EXISTS over 10,000 installations took
    # 237 ms on 411 partitions against 15 ms on the plain table (decision 0041).
    EventLog(
        "tracked_events",
        TrackedEvent,
        lambda settings: settings.tracked_events_retention_days,
        _TRACKED_READ_DAYS,
        None,
        partitioned=False,
    ),
)


async def keep_from(
    session: AsyncSession, log: EventLog, *, days: int, now: datetime
) -> date | None:
    """The first UTC day of `log` to keep with `days` of retention (None: keep them all)."""
    if days == 0:
        return None
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=max(days, log.read_days))
    if log.export is not None:
        needed = await needed_from(session, log.export, now)
        if needed is not None:
            first = min(first, needed)
    return first


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


async def delete_before(
    sessions: async_sessionmaker[AsyncSession],
    log: EventLog,
    day: date,
    *,
    batch: int = SQLITE_BATCH,
) -> int:
    """Delete the rows of `log` that occurred before `day`, app by app through the
    (app_id, occurred_at) index, at most `batch` per transaction so that no writer waits long
    for the connection; returns how many went."""
    model = log.model
    app_id, occurred_at, row_id = (getattr(model, name) for name in ("app_id", "occurred_at", "id"))
    before = day_start(day)
    async with sessions() as session:
        apps = list(await session.scalars(select(App.id).order_by(App.id)))
    deleted = 0
    for app in apps:
        while True:
            oldest = (
                select(row_id)
                .where(app_id == app, occurred_at < before)
                .order_by(occurred_at)
                .limit(batch)
            )
            async with transaction(sessions) as session:
                result = await session.execute(delete(model).where(row_id.in_(oldest)))
            gone: int = getattr(result, "rowcount", 0)
            deleted += gone
            if gone < batch:
                break
    return deleted
