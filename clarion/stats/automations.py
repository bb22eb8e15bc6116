"""Automation statistics: what became of an automation's entries, its conversions, and its most
recent entries (the dashboard's automation page). No HTTP.

An automation's pushes are counted as any campaign's (clarion.stats.service): the dispatcher's
sends carry the automation's token. What is its own is read here from `automation_entries`,
over a period (the entries finished since a date, and those pending now), so that a read costs
the period's entries whatever the automation's history:
- entries by state, day and why they were cancelled or skipped: one GROUP BY over ranges of
  ix_automation_entries_finished (campaign, state, finished_at, reason), read from the index
  alone; the pending ones, a count over the same index;
- conversions: the entries sent in the period whose user then tracked the trigger's
  `conversion.event` within `within_hours`, one set-based query (an EXISTS per entry on the
  tracked_events index of the user's id kind). Nothing is stored ahead (unlike campaigns'
  influenced opens, decision 0015): each read matches the period's sent entries, a cost
  measured by bench/automation_stats.py and bounded by the period (decision 0027).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.automations.models import ENTRIES, EntryState
from clarion.campaigns.models import Campaign
from clarion.campaigns.schemas import (
    AutomationStats,
    Conversion,
    DayStats,
    EntryDay,
    Trigger,
    VersionStats,
    stored_event_name,
)
from clarion.dialects import elapsed_seconds, utc_day
from clarion.events.models import TrackedEvent
from clarion.formats import wire_date

# The figures cover the entries that finished in the last this many days by default (and those
# pending now): a read costs the period's entries. For an automation of 1,000,000 entries over
# 120 days, 7 days (41,000 sent) read in a median 213 ms on PostgreSQL, 30 days (175,000 sent)
# in 902 ms, on a 2-core machine at a load average of 9-11 (bench/automation_stats.py).
STATS_DAYS = 7
MAX_STATS_DAYS = 365
_FINISHED = (EntryState.SENT.value, EntryState.CANCELLED.value, EntryState.SKIPPED.value)


async def automation_stats(
    session: AsyncSession,
    campaign: Campaign,
    trigger: Trigger,
    detail: list[DayStats],
    *,
    now: datetime,
    days: int = STATS_DAYS,
) -> AutomationStats:
    """The `automation` object of an automation's statistics, over the entries finished in the
    last `days` days and those pending now; `detail`: its pushes per day (the campaign
    statistics), summed from the first of those days."""
    since = now - timedelta(days=days)
    by_day: dict[str, EntryDay] = {}
    totals: dict[str, int] = dict.fromkeys(_FINISHED, 0)
    reasons: dict[str, dict[str, int]] = {EntryState.CANCELLED: {}, EntryState.SKIPPED: {}}
    for state, reason, date, count in await finished_entries(session, campaign.id, since=since):
        totals[state] += count
        day = by_day.setdefault(date, EntryDay(date=date))
        setattr(day, state, getattr(day, state) + count)
        if state in reasons:
            why = reason or "unknown"
            reasons[state][why] = reasons[state].get(why, 0) + count
    converted = None
    if trigger.conversion is not None:
        converted = 0
        found = await converted_entries(session, campaign, trigger.conversion, since=since)
        for date, count in found.items():
            by_day.setdefault(date, EntryDay(date=date)).converted = count
            converted += count
        for day in by_day.values():
            day.converted = day.converted or 0
    pending = await session.scalar(
        select(func.count()).where(
            ENTRIES.c.campaign_id == campaign.id, ENTRIES.c.state == EntryState.PENDING.value
        )
    )
    pushes = VersionStats()
    first_day = since.date().isoformat()
    for pushed in detail:
        if pushed.date >= first_day:
            for name in VersionStats.model_fields:
                setattr(pushes, name, getattr(pushes, name) + getattr(pushed, name))
    return AutomationStats(
        since=wire_date(since),
        entries=int(pending or 0) + sum(totals.values()),
        pending=int(pending or 0),
        sent=totals[EntryState.SENT],
        cancelled=totals[EntryState.CANCELLED],
        skipped=totals[EntryState.SKIPPED],
        cancelled_reasons=_by_count(reasons[EntryState.CANCELLED]),
        skipped_reasons=_by_count(reasons[EntryState.SKIPPED]),
        pushes=pushes,
        conversion=trigger.conversion,
        converted=converted,
        detail=[by_day[date] for date in sorted(by_day)],
    )


def _by_count(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


async def finished_entries(
    session: AsyncSession, campaign_id: int, *, since: datetime
) -> list[tuple[str, str | None, str, int]]:
    """(state, reason, UTC day, entries) of an automation's entries finished since `since`:
    one range of ix_automation_entries_finished per state, read from the index alone."""
    day = utc_day(ENTRIES.c.finished_at)
    rows = await session.execute(
        select(ENTRIES.c.state, ENTRIES.c.reason, day, func.count())
        .where(
            ENTRIES.c.campaign_id == campaign_id,
            ENTRIES.c.state.in_(_FINISHED),
            ENTRIES.c.finished_at >= since,
        )
        .group_by(ENTRIES.c.state, ENTRIES.c.reason, day)
    )
    return [(state, reason, date, int(count)) for state, reason, date, count in rows]


async def converted_entries(
    session: AsyncSession, campaign: Campaign, conversion: Conversion, *, since: datetime
) -> dict[str, int]:
    """{UTC day: entries} sent since `since` whose user tracked the conversion event within
    `within_hours` after the send. The EXISTS is a filter, not a value: the planner may then
    probe the user's events by index per entry or hash the conversion events at once,
    whichever the sizes favour."""
    day = utc_day(ENTRIES.c.finished_at)
    rows = await session.execute(
        select(day, func.count())
        .where(
            ENTRIES.c.campaign_id == campaign.id,
            ENTRIES.c.state == EntryState.SENT.value,
            ENTRIES.c.finished_at >= since,
            converted_entry(campaign.app_id, conversion, since=since),
        )
        .group_by(day)
    )
    return {date: int(count) for date, count in rows}


def converted_entry(app_id: int, conversion: Conversion, *, since: datetime) -> ColumnElement[bool]:
    """Whether an entry's user tracked the conversion event within its window after the entry
    was sent (its finished_at, since `since`). The user is who tracks that kind of event: a
    server event (`ue.`) names a custom user id; an SDK event (`e.`) an installation, or, for an
    entry of a server event (no installation), any installation of the entry's custom user id
    (SDK events carry the custom id of their installation)."""
    window = conversion.within_hours * 3600

    def tracked(column: str) -> ColumnElement[bool]:
        # Equality on (app_id, name, user) and a range on occurred_at: the user's events of
        # that name from the send on, in ix_tracked_events_app_name_{custom,install}.
        user = TrackedEvent.custom_id if column == "custom_id" else TrackedEvent.install_id
        return (
            select(TrackedEvent.id)
            .where(
                TrackedEvent.app_id == app_id,
                TrackedEvent.name == stored_event_name(conversion.event),
                user == ENTRIES.c[column],
                TrackedEvent.occurred_at >= ENTRIES.c.finished_at,
                # Implied by the line above; it bounds a scan of the events when the planner
                # prefers hashing them.
                TrackedEvent.occurred_at >= since,
                elapsed_seconds(ENTRIES.c.finished_at, TrackedEvent.occurred_at) <= window,
            )
            .exists()
        )

    if conversion.event.startswith("ue."):
        return tracked("custom_id")
    return or_(
        and_(ENTRIES.c.install_id.is_not(None), tracked("install_id")),
        and_(ENTRIES.c.install_id.is_(None), tracked("custom_id")),
    )


@dataclass(frozen=True)
class EntryRow:
    id: int
    custom_id: str | None
    install_id: str | None
    state: str
    reason: str | None
    entered_at: datetime
    due_at: datetime
    finished_at: datetime | None


async def recent_entries(
    session: AsyncSession, *, campaign_id: int, before: int | None, limit: int
) -> list[EntryRow]:
    """An automation's entries, newest first, from the one before entry id `before` (a page
    of the dashboard's list: keyset, never an offset into millions of rows).

    The page's ids first, from ix_automation_entries_newest alone: asked for the rows at once,
    PostgreSQL walked the primary key backwards over every newer entry of the other
    automations (435 ms behind 1,000,000 of them, against 0.3 ms)."""
    newest = select(ENTRIES.c.id).where(ENTRIES.c.campaign_id == campaign_id)
    if before is not None:
        newest = newest.where(ENTRIES.c.id < before)
    newest = newest.order_by(ENTRIES.c.campaign_id.desc(), ENTRIES.c.id.desc()).limit(limit)
    rows = await session.execute(
        select(
            ENTRIES.c.id,
            ENTRIES.c.custom_id,
            ENTRIES.c.install_id,
            ENTRIES.c.state,
            ENTRIES.c.reason,
            ENTRIES.c.entered_at,
            ENTRIES.c.due_at,
            ENTRIES.c.finished_at,
        )
        .where(ENTRIES.c.id.in_(newest.scalar_subquery()))
        .order_by(ENTRIES.c.id.desc())
    )
    return [EntryRow(*row) for row in rows]
