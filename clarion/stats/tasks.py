"""What runs in the background for statistics: the upkeep (keep_up, every
CLARION_STATS_INTERVAL_SECONDS) folds the event counts of campaigns and transactional group_ids,
and stores their attributed opens per day (the reads: clarion.stats.service). clarion.runtime
starts it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.campaigns.models import Campaign, CampaignOpenDay
from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.db import bulk_insert, transaction, utcnow
from clarion.events.models import PushEventCount, PushEventKind
from clarion.events.service import fold_event_counts
from clarion.stats.service import SETTLE, Subject, attributed_opens, next_day
from clarion.transactional.models import GroupOpenDay

# attribute_finished_days looks back this far, the longest period the dashboard's analytics
# show; older days not stored are matched on read.
LOOKBACK_DAYS = 90

# Subjects (campaigns, groups) whose counts the workers' upkeep (keep_up) folds per transaction.
FOLD_SUBJECTS = 20

# Days it stores per transaction. On SQLite one: the database has a single connection (decision
# 0006), and 20 days of a large campaign held it ~5 s (233 ms each for 16,685 events) while API
# calls waited.
DAYS_PER_TRANSACTION = 20

DAYS_PER_TRANSACTION_SQLITE = 1


async def keep_up(
    sessions: async_sessionmaker[AsyncSession],
    *,
    budget_seconds: float = 10.0,
    days: int = DAYS_PER_TRANSACTION,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """The workers' statistics upkeep, every stats_interval_seconds: folds the counts written
    since the last round, stores finished days' attributed opens, then refreshes the provisional
    figures of the days still open, in short transactions for at most about `budget_seconds` (a
    backlog, after an upgrade say, or many subjects sending today, takes a few rounds), each
    storing at most `days` days."""
    # A fold of fewer than FOLD_SUBJECTS subjects has caught up: a campaign that is sending
    # keeps writing counts, and folding them again at once would repeat the fold until the
    # deadline. (So the fold's batch must stay larger than the few subjects sending at once.)
    started = clock()
    deadline = clock.monotonic() + budget_seconds
    while clock.monotonic() < deadline:
        async with transaction(sessions) as session:
            if await fold_event_counts(session, subjects=FOLD_SUBJECTS) < FOLD_SUBJECTS:
                break
    # Finished days are stored once; open days once a round (those refreshed since `started`
    # are skipped): both loops end when a transaction stores less than it could.
    while clock.monotonic() < deadline:
        async with transaction(sessions) as session:
            if await attribute_finished_days(session, now=clock(), limit=days) < days:
                break
    # At least one batch of open days a round, however long a backlog above took.
    while True:
        async with transaction(sessions) as session:
            stored = await attribute_open_days(session, now=clock(), before=started, limit=days)
        if stored < days or clock.monotonic() >= deadline:
            break


async def attribute_finished_days(
    session: AsyncSession, *, now: datetime | None = None, limit: int = 20
) -> int:
    """Stores, as final, the attributed opens of up to `limit` (campaign or group_id, day)
    pairs whose day ended SETTLE ago, within LOOKBACK_DAYS, and that have no final row yet;
    returns how many.

    Two processes storing the same day store the same figures (the second write replaces the
    first's)."""
    now = now or utcnow()
    last = _last_settled(now)
    first = last - timedelta(days=LOOKBACK_DAYS)
    due = await _subject_days(session, first, last)
    done = await _stored_days(session, first, last, final_only=True)
    pending = sorted(subject_day for subject_day in due if _day_key(*subject_day) not in done)
    await _store(session, pending[:limit], final=True, now=now)
    return len(pending[:limit])


async def attribute_open_days(
    session: AsyncSession,
    *,
    now: datetime | None = None,
    before: datetime | None = None,
    limit: int | None = None,
) -> int:
    """Stores, as provisional, the attributed opens of the campaign and group_id days that have
    not settled yet (today, and yesterday for SETTLE), replacing those stored before; returns
    how many. Up to `limit` of them, those computed longest ago first, and only those not
    computed since `before` (the start of the workers' round) if given.

    The workers refresh them every stats_interval_seconds, so that the statistics of a campaign
    that sent millions today read figures about that old instead of matching its sends with the
    app's opens on every view."""
    now = now or utcnow()
    first, today = _last_settled(now) + timedelta(days=1), now.date()
    due = await _subject_days(session, first, today)
    computed = await _stored_days(session, first, today, final_only=False)
    never = datetime.min.replace(tzinfo=UTC)
    pending = sorted(
        (computed.get(_day_key(*subject_day), never), subject_day) for subject_day in due
    )
    if before is not None:
        pending = [(at, subject_day) for at, subject_day in pending if at < before]
    chosen = [subject_day for _, subject_day in pending[:limit]]
    await _store(session, chosen, final=False, now=now)
    return len(chosen)


def _day_key(subject: Subject, day: str) -> tuple[object, ...]:
    """How the stored rows name a subject's day: by campaign token, or by app and group_id."""
    if subject.campaign_token:
        return (subject.campaign_token, day)
    return (subject.app_id, subject.group_id, day)


async def _stored_days(
    session: AsyncSession, first: date, last: date, *, final_only: bool
) -> dict[tuple[object, ...], datetime]:
    """{_day_key: when it was computed} of the days stored between `first` and `last` (final
    ones only if `final_only`); a campaign's day was computed when its oldest version row was."""
    within = (first.isoformat(), last.isoformat())
    campaigns = (
        select(
            CampaignOpenDay.campaign_token,
            CampaignOpenDay.day,
            func.min(CampaignOpenDay.computed_at),
        )
        .where(CampaignOpenDay.day.between(*within))
        .group_by(CampaignOpenDay.campaign_token, CampaignOpenDay.day)
    )
    groups = select(
        GroupOpenDay.app_id, GroupOpenDay.group_id, GroupOpenDay.day, GroupOpenDay.computed_at
    ).where(GroupOpenDay.day.between(*within))
    if final_only:
        campaigns = campaigns.where(CampaignOpenDay.final.is_(True))
        groups = groups.where(GroupOpenDay.final.is_(True))
    stored: dict[tuple[object, ...], datetime] = {
        (token, day): at for token, day, at in await session.execute(campaigns)
    }
    for app_id, group_id, day, at in await session.execute(groups):
        stored[app_id, group_id, day] = at
    return stored


def _last_settled(now: datetime) -> date:
    """The last UTC day that ended SETTLE ago or more."""
    return (now - SETTLE).date() - timedelta(days=1)


async def _subject_days(session: AsyncSession, first: date, last: date) -> set[tuple[Subject, str]]:
    """(campaign or group_id, day) pairs between `first` and `last` that can have attributed
    opens: days with counted events, and the day after a day of sends (INFLUENCE_WINDOW
    reaches it)."""
    seen = await session.execute(
        select(
            PushEventCount.app_id,
            PushEventCount.campaign_token,
            PushEventCount.group_id,
            PushEventCount.day,
            PushEventCount.kind == PushEventKind.SENT.value,
        )
        .where(
            PushEventCount.day >= (first - timedelta(days=1)).isoformat(),
            PushEventCount.day <= last.isoformat(),
            or_(PushEventCount.campaign_token != "", PushEventCount.group_id != ""),
        )
        .distinct()
    )
    days: set[tuple[Subject, str]] = set()
    for app_id, token, group_id, day, sent in seen:
        # A campaign's events are the campaign's, whatever group_id they may carry.
        subject = Subject(app_id, token) if token else Subject(app_id, group_id=group_id)
        days.add((subject, day))
        if sent:
            days.add((subject, next_day(day)))
    return {(subject, day) for subject, day in days if first.isoformat() <= day <= last.isoformat()}


async def _store(
    session: AsyncSession, pending: list[tuple[Subject, str]], *, final: bool, now: datetime
) -> None:
    if not pending:
        return
    # Counted events of a campaign that no longer exists at all get the marker row only.
    existing = await session.scalars(
        select(Campaign.token).where(
            Campaign.token.in_({s.campaign_token for s, _ in pending if s.campaign_token})
        )
    )
    campaigns = set(existing)
    stored_at = now
    campaign_rows = []
    group_rows = []
    for subject, day in pending:
        totals: dict[str, list[int]] = {"": [0, 0]}  # the marker row, at least
        if not subject.campaign_token or subject.campaign_token in campaigns:
            for _, version, field, count in await attributed_opens(session, subject, day):
                totals.setdefault(version or "", [0, 0])[field == "reengaged"] += count
        if subject.campaign_token:
            campaign_rows += [
                (subject.campaign_token, day, version, influenced, reengaged, stored_at, final)
                for version, (influenced, reengaged) in totals.items()
            ]
        else:  # transactional sends have no A/B version: the "" row holds it all
            influenced = sum(counts[0] for counts in totals.values())
            group_rows.append((subject.app_id, subject.group_id, day, influenced, stored_at, final))
    stored = ("computed_at", "final")
    if campaign_rows:
        await bulk_insert(
            session,
            CampaignOpenDay.__tablename__,
            ("campaign_token", "day", "version", "influenced_open", "reengaged", *stored),
            campaign_rows,
            conflict=("campaign_token", "day", "version"),
            update=("influenced_open", "reengaged", *stored),
        )
    if group_rows:
        await bulk_insert(
            session,
            GroupOpenDay.__tablename__,
            ("app_id", "group_id", "day", "influenced_open", *stored),
            group_rows,
            conflict=("app_id", "group_id", "day"),
            update=("influenced_open", *stored),
        )
