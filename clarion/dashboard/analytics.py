"""What the analytics pages show: campaign statistics as totals, rates and chart points;
transactional sends by group_id; the last errors with the provider's reasons. No HTTP here.

Campaign figures come from stats.service.campaign_stats (the Campaigns API's own numbers);
group_id figures are summed from the per-day counts written with the events (PushEventCount),
and their influenced opens read as campaigns' are (stats.service.group_influenced_opens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.campaigns.schemas import AutomationStats, CampaignStats, DayStats, VersionStats
from clarion.db import utcnow
from clarion.events.models import PushEvent, PushEventCount, PushEventKind
from clarion.stats.service import STAT_OF_KIND, group_influenced_opens

_ERROR_KINDS = (PushEventKind.ERROR.value, PushEventKind.TOKEN_DELETED.value)
# Errors older than this are not looked for when a page lists the last ones of a group.
_ERROR_WINDOW = timedelta(days=30)


@dataclass
class Totals:
    sent: int = 0
    resent: int = 0  # of `sent`, sent again after an unknown outcome
    direct_open: int = 0
    influenced_open: int = 0
    errors: int = 0

    @property
    def open_rate(self) -> float:
        """Direct opens per notification sent, in percent."""
        return 100.0 * self.direct_open / self.sent if self.sent else 0.0

    def add(self, stats: VersionStats | Totals) -> None:
        self.sent += stats.sent
        self.resent += stats.resent
        self.direct_open += stats.direct_open
        self.influenced_open += stats.influenced_open
        self.errors += stats.errors


@dataclass
class Bar:
    """One day of a chart: its label and bar heights, scaled to the chart's height."""

    label: str
    x: float
    sent_height: float
    opened_height: float
    rate_y: float  # the open rate's point on the line


@dataclass
class Chart:
    width: int
    height: int
    bar_width: float
    bars: list[Bar]
    peak: int  # the largest daily sent count, the top of the scale
    rate_points: str  # SVG polyline points of the daily open rate (0-100 % over the height)


@dataclass
class Report:
    totals: Totals
    days: list[tuple[str, Totals]]
    versions: dict[str, Totals] = field(default_factory=dict)
    chart: Chart | None = None


@dataclass
class ErrorRow:
    occurred_at: datetime
    kind: str
    reason: str | None
    install_id: str | None
    platform: str


@dataclass
class GroupRow:
    group_id: str
    totals: Totals


def campaign_report(stats: CampaignStats) -> Report:
    totals = Totals()
    days: list[tuple[str, Totals]] = []
    versions: dict[str, Totals] = {}
    for day in stats.detail:
        day_totals = Totals()
        day_totals.add(day)
        totals.add(day)
        days.append((day.date, day_totals))
        for name, version in (day.versions or {}).items():
            versions.setdefault(name, Totals()).add(version)
    return Report(totals, days, dict(sorted(versions.items())), _chart(days))


@dataclass
class AutomationDay:
    """One UTC day of an automation: its entries finished that day, and its pushes."""

    date: str
    sent: int = 0
    cancelled: int = 0
    skipped: int = 0
    converted: int | None = None
    pushes: Totals = field(default_factory=Totals)

    @property
    def conversion_rate(self) -> float | None:
        """Converted entries per entry sent, in percent (None without a conversion event)."""
        if self.converted is None:
            return None
        return 100.0 * self.converted / self.sent if self.sent else 0.0


@dataclass
class AutomationReport:
    totals: AutomationDay  # the whole period
    days: list[AutomationDay]


def automation_report(stats: AutomationStats, pushed: list[DayStats]) -> AutomationReport:
    """An automation's figures over its period, per day: its entries' (sent, cancelled,
    skipped, converted) beside its pushes' of the same UTC days (`pushed`: its campaign
    statistics' days)."""
    first = stats.since[:10]
    days = {
        day.date: AutomationDay(
            day.date, day.sent, day.cancelled, day.skipped, converted=day.converted
        )
        for day in stats.detail
    }
    for day in pushed:
        if day.date >= first:
            days.setdefault(day.date, AutomationDay(day.date)).pushes.add(day)
    totals = AutomationDay(
        "", stats.sent, stats.cancelled, stats.skipped, converted=stats.converted
    )
    totals.pushes.add(stats.pushes)
    return AutomationReport(totals, [days[date] for date in sorted(days)])


async def recent_errors(
    session: AsyncSession,
    *,
    app_id: int,
    campaign_token: str | None = None,
    group_id: str | None = None,
    now: datetime | None = None,
    limit: int = 20,
) -> list[ErrorRow]:
    """The last push_error / token_deleted events of a campaign, or of a group_id within
    _ERROR_WINDOW before `now` (the current time by default).

    One query per kind, each a range of an index ordered by time, (campaign_token, kind,
    occurred_at) or (app_id, group_id, kind, occurred_at): a single ORDER BY over both kinds
    let PostgreSQL walk the app's whole event log backwards when there was no error."""
    scope: list[ColumnElement[bool]] = [PushEvent.app_id == app_id]
    if campaign_token is not None:
        scope.append(PushEvent.campaign_token == campaign_token)
    if group_id is not None:
        scope.append(PushEvent.group_id == group_id)
        scope.append(PushEvent.occurred_at >= (now or utcnow()) - _ERROR_WINDOW)
    events: list[PushEvent] = []
    for kind in _ERROR_KINDS:
        events += await session.scalars(
            select(PushEvent)
            .where(*scope, PushEvent.kind == kind)
            .order_by(PushEvent.occurred_at.desc())
            .limit(limit)
        )
    events = sorted(events, key=lambda event: event.occurred_at, reverse=True)[:limit]
    return [ErrorRow(e.occurred_at, e.kind, e.reason, e.install_id, e.platform) for e in events]


async def group_stats(
    session: AsyncSession, *, app_id: int, days: int, now: datetime
) -> list[GroupRow]:
    """Transactional sends of the last `days` UTC days (today included) by group_id, most sent
    first."""
    rows = []
    for group_id, by_day in (await _group_days(session, app_id, days, now)).items():
        totals = Totals()
        for day_totals in by_day.values():
            totals.add(day_totals)
        rows.append(GroupRow(group_id, totals))
    return sorted(rows, key=lambda row: (-row.totals.sent, row.group_id))


async def group_report(
    session: AsyncSession, *, app_id: int, group_id: str, days: int, now: datetime
) -> Report:
    """A group_id's sends of the last `days` UTC days (today included), per day."""
    by_day = (await _group_days(session, app_id, days, now, group_id=group_id)).get(group_id, {})
    totals = Totals()
    for day_totals in by_day.values():
        totals.add(day_totals)
    ordered = sorted(by_day.items())
    return Report(totals, ordered, chart=_chart(ordered))


async def _group_days(
    session: AsyncSession, app_id: int, days: int, now: datetime, *, group_id: str | None = None
) -> dict[str, dict[str, Totals]]:
    """group_id -> UTC day -> its figures, over the last `days` days (today included), for all
    the app's group_ids or one: the counted events, and the influenced opens."""
    first = _first_day(days, now)
    query = (
        select(
            PushEventCount.group_id,
            PushEventCount.day,
            PushEventCount.kind,
            func.sum(PushEventCount.count),
        )
        .where(
            PushEventCount.app_id == app_id,
            # Sends of the day before the period influence opens on its first day.
            PushEventCount.day >= _day_before(first),
            PushEventCount.group_id != "",
            PushEventCount.campaign_token == "",
        )
        .group_by(PushEventCount.group_id, PushEventCount.day, PushEventCount.kind)
    )
    if group_id is not None:
        query = query.where(PushEventCount.group_id == group_id)
    by_group: dict[str, dict[str, Totals]] = {}
    sent_days: dict[str, set[str]] = {}
    for group, day, kind, count in await session.execute(query):
        if kind == PushEventKind.SENT.value:
            sent_days.setdefault(group, set()).add(day)
        if day >= first:
            _count(by_group.setdefault(group, {}).setdefault(day, Totals()), kind, int(count))
    influenced = await group_influenced_opens(session, app_id, sent_days, first=first, now=now)
    for (group, day), count in influenced.items():
        by_group.setdefault(group, {}).setdefault(day, Totals()).influenced_open += count
    return by_group


def _first_day(days: int, now: datetime) -> str:
    return (now.date() - timedelta(days=days - 1)).isoformat()


def _day_before(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def _count(totals: Totals, kind: str, count: int) -> None:
    """Adds `count` events of `kind` as the campaign statistics count them."""
    counted = VersionStats()
    for name in STAT_OF_KIND[kind]:
        setattr(counted, name, count)
    totals.add(counted)


def _chart(days: list[tuple[str, Totals]], *, width: int = 720, height: int = 200) -> Chart | None:
    """Daily sent (bars), direct opens (inner bars) and open rate (line), drawn by the
    template as SVG: no chart library, no script."""
    if not days:
        return None
    peak = max(max(totals.sent, totals.direct_open) for _, totals in days) or 1
    slot = width / len(days)
    bar_width = max(2.0, slot * 0.7)
    bars = []
    for index, (label, totals) in enumerate(days):
        x = index * slot + (slot - bar_width) / 2
        rate_y = height - height * min(totals.open_rate, 100.0) / 100.0
        bars.append(
            Bar(
                label=label,
                x=round(x, 1),
                sent_height=round(height * totals.sent / peak, 1),
                opened_height=round(height * totals.direct_open / peak, 1),
                rate_y=round(rate_y, 1),
            )
        )
    points = " ".join(f"{bar.x + bar_width / 2:.1f},{bar.rate_y}" for bar in bars)
    return Chart(width, height, round(bar_width, 1), bars, peak, points)
