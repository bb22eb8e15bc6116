"""Campaign statistics (`GET campaigns/stats/{token}`, the dashboard's statistics page), and
the influenced opens of transactional group_ids (the dashboard's analytics). No HTTP.

Two kinds of figures, read two ways so that a campaign of millions of events reads in
milliseconds:
- counted figures (sent, re-sent, direct opens, errors) are summed from push_event_counts, which
  the event log's writer keeps (clarion.events.service.record_push_events): live and exact;
- attributed figures (influenced opens, re-engaged installs) match the campaign's sends with
  the app's opens. The workers store them every minute: a finished UTC day's once and for all
  (attribute_finished_days, SETTLE after the day ends), the days still open provisionally
  (attribute_open_days, replaced each minute). A day with nothing stored is matched on read,
  over that day's opens only.
A transactional group_id's influenced opens are matched and stored the same way
(GroupOpenDay); its counted figures are read by the dashboard (clarion.dashboard.analytics).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial

from sqlalchemy import ColumnElement, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.orm.util import AliasedClass

from clarion.apps.service import AppAccess
from clarion.campaigns.models import CampaignOpenDay
from clarion.campaigns.schemas import CampaignBody, CampaignStats, DayStats, VersionStats
from clarion.campaigns.service import find_campaign
from clarion.db import utcnow
from clarion.delivery.models import Send
from clarion.dialects import elapsed_seconds
from clarion.events.models import (
    APP_OPEN_EVENT,
    RESENT_COUNT,
    PushEvent,
    PushEventCount,
    PushEventKind,
    TrackedEvent,
)
from clarion.stats.automations import STATS_DAYS, automation_stats
from clarion.transactional.models import GroupOpenDay

# An app opened this long after a campaign reached it counts as an influenced open.
INFLUENCE_WINDOW = timedelta(hours=3)
# An install that opens after a send is re-engaged if it had not opened the app for this long.
REENGAGED_AFTER = timedelta(days=30)
# A day's attributed opens are stored this long after it ends: SDKs report opens late (an
# app offline), as the daily exports allow for too.
SETTLE = timedelta(hours=2)

STAT_OF_KIND: dict[str, tuple[str, ...]] = {
    PushEventKind.SENT.value: ("sent", "sent_optins"),
    PushEventKind.OPENED.value: ("direct_open",),
    PushEventKind.ERROR.value: ("errors",),
    PushEventKind.TOKEN_DELETED.value: ("errors",),
    RESENT_COUNT: ("resent",),
}

# (UTC day, A/B version or None, a field of VersionStats, count)
StatRow = tuple[str, str | None, str, int]


@dataclass(frozen=True, order=True)
class Subject:
    """Whose sends the app's opens are attributed to: a campaign (all its A/B versions), or a
    transactional group_id of an app."""

    app_id: int
    campaign_token: str = ""
    group_id: str = ""

    def owns(self, event: type[PushEvent] | AliasedClass[PushEvent]) -> ColumnElement[bool]:
        """The condition that `event` is one of the subject's.

        A campaign's token alone (tokens are unique across apps): with the app as well,
        SQLite, which has no statistics, reads the app's events by time
        (ix_push_events_app_time) rather than the campaign's (ix_push_events_of_campaigns)."""
        if self.campaign_token:
            return event.campaign_token == self.campaign_token
        # A campaign's events are the campaign's, whatever group_id they may carry (as counted).
        return (
            (event.app_id == self.app_id)
            & (event.group_id == self.group_id)
            & event.campaign_token.is_(None)
        )


async def campaign_stats(
    session: AsyncSession,
    *,
    access: AppAccess,
    token: str,
    now: datetime | None = None,
    automation_days: int = STATS_DAYS,
) -> CampaignStats:
    """Per UTC day, and per version for A/B campaigns: sent (campaigns reach opted-in installs
    only, so sent_optins is the same), resent (of sent, those sent again after an unknown
    outcome), direct opens (open reports carrying the send id), influenced opens and
    reengaged installs (see opens_after_sends), errors (push_error and token_deleted). An
    automation's also tell what became of its entries over the last days, and its
    conversions (clarion.stats.automations)."""
    campaign = await find_campaign(session, access, token)
    now = now or utcnow()
    body = CampaignBody.model_validate(campaign.body)
    ab = len(body.versions) > 1
    counted = (
        await session.execute(
            select(
                PushEventCount.day,
                PushEventCount.send_token,
                PushEventCount.kind,
                func.sum(PushEventCount.count),
            )
            .where(PushEventCount.campaign_token == campaign.token)
            .group_by(PushEventCount.day, PushEventCount.send_token, PushEventCount.kind)
        )
    ).all()
    version_of: dict[str, str | None] = {}
    if ab:
        sends = {send_token for _, send_token, _, _ in counted}
        found = await session.execute(select(Send.token, Send.version).where(Send.token.in_(sends)))
        version_of = dict(found.all())
    rows: list[StatRow] = [
        (day, version_of.get(send_token), field, int(count))
        for day, send_token, kind, count in counted
        for field in STAT_OF_KIND[kind]
    ]
    # Influenced opens fall on the day of a send or, within INFLUENCE_WINDOW, the next one;
    # re-engaged installs on a day of direct or influenced opens.
    sent_days = {day for day, _, kind, _ in counted if kind == PushEventKind.SENT.value}
    days = {day for day, _, _, _ in counted} | {next_day(day) for day in sent_days}
    subject = Subject(campaign.app_id, campaign.token)
    rows += await _attributed(session, subject, days, now)
    by_day: dict[str, DayStats] = {}
    for day, version, field, count in sorted(rows, key=lambda row: row[0]):
        entry = by_day.setdefault(day, DayStats(date=day, versions={} if ab else None))
        targets: list[VersionStats] = [entry]
        if ab and version is not None and entry.versions is not None:
            targets.append(entry.versions.setdefault(version, VersionStats()))
        for target in targets:
            setattr(target, field, getattr(target, field) + count)
    stats = CampaignStats(campaign_token=campaign.token, detail=list(by_day.values()))
    if body.trigger is not None:
        stats.automation = await automation_stats(
            session, campaign, body.trigger, stats.detail, now=now, days=automation_days
        )
    return stats


async def _attributed(
    session: AsyncSession, subject: Subject, days: set[str], now: datetime
) -> list[StatRow]:
    """A campaign's influenced opens and re-engaged installs on `days`: stored, or matched
    now."""
    stored: dict[str, list[StatRow]] = defaultdict(list)
    for row in await session.scalars(
        select(CampaignOpenDay).where(CampaignOpenDay.campaign_token == subject.campaign_token)
    ):
        version = row.version or None
        stored[row.day].append((row.day, version, "influenced_open", row.influenced_open))
        stored[row.day].append((row.day, version, "reengaged", row.reengaged))
    today = now.date().isoformat()
    rows: list[StatRow] = []
    for day in sorted(days | set(stored)):
        if day in stored:
            rows += stored[day]
        elif day <= today:
            rows += await attributed_opens(session, subject, day)
    return [row for row in rows if row[3]]


async def group_influenced_opens(
    session: AsyncSession,
    app_id: int,
    sent_days: dict[str, set[str]],
    *,
    first: str,
    now: datetime,
) -> dict[tuple[str, str], int]:
    """{(group_id, day): installs} of the influenced opens of the app's transactional group_ids
    on the UTC days from `first` to today, without zeros. `sent_days`: group_id -> the days it
    sent on, the day before `first` included (INFLUENCE_WINDOW reaches into the next day). Read
    from the days the workers' upkeep stored, or matched now for a day not stored."""
    today = now.date().isoformat()
    days = {
        group_id: {d for day in group_days for d in (day, next_day(day)) if first <= d <= today}
        for group_id, group_days in sent_days.items()
    }
    found: dict[tuple[str, str], int] = {}
    stored: set[tuple[str, str]] = set()
    rows = await session.scalars(
        select(GroupOpenDay).where(
            GroupOpenDay.app_id == app_id,
            GroupOpenDay.group_id.in_(days),
            GroupOpenDay.day >= first,
            GroupOpenDay.day <= today,
        )
    )
    for row in rows:
        if row.day in days[row.group_id]:
            stored.add((row.group_id, row.day))
            if row.influenced_open:
                found[row.group_id, row.day] = row.influenced_open
    for group_id, group_days in days.items():
        for day in sorted(group_days):
            if (group_id, day) not in stored:
                subject = Subject(app_id, group_id=group_id)
                for _, _, _, count in await attributed_opens(session, subject, day):
                    # (One row: transactional sends have no A/B version.)
                    found[group_id, day] = found.get((group_id, day), 0) + count
    return found


async def attributed_opens(session: AsyncSession, subject: Subject, day: str) -> list[StatRow]:
    """The subject's influenced opens and, for a campaign, re-engaged installs on one UTC day,
    matched from the event log."""
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
    opens = partial(opens_after_sends, session, subject, start=start)
    rows: list[StatRow] = [
        (day, version, "influenced_open", count) for version, count in await opens(influenced=True)
    ]
    if subject.campaign_token:
        for influenced in (False, True):
            found = await opens(influenced=influenced, reengaged_only=True)
            rows += [(day, version, "reengaged", count) for version, count in found]
    return rows


async def opens_after_sends(
    session: AsyncSession,
    subject: Subject,
    *,
    start: datetime,
    influenced: bool,
    reengaged_only: bool = False,
) -> list[tuple[str | None, int]]:
    """(version, installs) that opened on the UTC day beginning at `start`, after a send of
    the subject (version None: a transactional send, or a campaign without A/B versions).

    `influenced`: installs that opened the app (an SDK app open) within INFLUENCE_WINDOW after
    the subject reached them, without opening the notification; otherwise installs that opened
    the notification (direct opens). `reengaged_only`: only installs that had not opened the app
    for REENGAGED_AFTER before the send reached them."""
    end = start + timedelta(days=1)
    app_id = subject.app_id
    sent = PushEvent
    if influenced:
        app_open = aliased(TrackedEvent)
        direct = aliased(PushEvent)
        after_send = elapsed_seconds(sent.occurred_at, app_open.occurred_at)
        opener = app_open.install_id
        query = select(Send.version, func.count(distinct(opener))).join(
            app_open,
            (app_open.app_id == app_id)
            & (app_open.name == APP_OPEN_EVENT)
            & (app_open.install_id == sent.install_id)
            & (app_open.occurred_at >= start)
            & (app_open.occurred_at < end)
            & (after_send > 0)
            & (after_send <= INFLUENCE_WINDOW.total_seconds()),
        )
        # Only sends that can have influenced an open of the day.
        query = query.where(
            subject.owns(sent),
            sent.occurred_at >= start - INFLUENCE_WINDOW,
            sent.occurred_at < end,
            # The open looked up by install (ix_push_events_install): given the subject
            # (campaign token or group) as well, SQLite would read all its opens for each send.
            ~select(direct.id)
            .where(
                direct.app_id == app_id,
                direct.install_id == sent.install_id,
                direct.send_token == sent.send_token,
                direct.kind == PushEventKind.OPENED.value,
            )
            .exists(),
        )
    else:
        # The subject's opens of the day (its index), each with the send that it opened, looked
        # up by install (ix_push_events_install). The send needs no subject filter of its
        # own: a send token (a transactional call, or one A/B version of a campaign run) is a
        # UUID of one app's one send.
        opened = aliased(PushEvent)
        opener = opened.install_id
        query = select(Send.version, func.count(distinct(opener))).join(
            opened,
            subject.owns(opened)
            & (opened.kind == PushEventKind.OPENED.value)
            & (opened.occurred_at >= start)
            & (opened.occurred_at < end)
            & (opened.install_id == sent.install_id)
            & (opened.send_token == sent.send_token),
        )
        query = query.where(sent.app_id == app_id, sent.occurred_at < end)
    if reengaged_only:
        earlier = aliased(TrackedEvent)
        before_send = elapsed_seconds(earlier.occurred_at, sent.occurred_at)
        query = query.where(
            ~select(earlier.id)
            .where(
                earlier.app_id == app_id,
                earlier.name == APP_OPEN_EVENT,
                earlier.install_id == sent.install_id,
                before_send >= 0,
                before_send <= REENGAGED_AFTER.total_seconds(),
            )
            .exists()
        )
    rows = await session.execute(
        query.select_from(sent)
        .outerjoin(Send, Send.token == sent.send_token)
        .where(sent.kind == PushEventKind.SENT.value)
        .group_by(Send.version)
    )
    return [(version, count) for version, count in rows]


def next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()
