"""Writing the event log, always in bulk (one executemany per batch of rows), and the
Trigger Events API's server-side events."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import case, delete, func, insert, literal, select, true, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.db import bulk_insert, bulk_times, json_text
from clarion.dialects import utc_day
from clarion.events.models import (
    COUNTED_KINDS,
    RESENT_COUNT,
    InAppEvent,
    PushEvent,
    PushEventCount,
    PushEventKind,
    TrackedEvent,
)
from clarion.events.schemas import ServerEventIn
from clarion.formats import IdType
from clarion.gdpr.service import blocked_values
from clarion.metrics import count_notifications

log = logging.getLogger(__name__)

PUSH_EVENT_COLUMNS = (
    "app_id",
    "kind",
    "occurred_at",
    "platform",
    "install_id",
    "custom_id",
    "advertising_id",
    "push_token",
    "send_token",
    "group_id",
    "campaign_token",
    "reason",
    "resent",
)
PushEventRow = tuple[Any, ...]  # in PUSH_EVENT_COLUMNS order


def push_event_row(
    *,
    app_id: int,
    kind: PushEventKind,
    occurred_at: datetime,
    platform: str,
    install_id: str | None = None,
    custom_id: str | None = None,
    advertising_id: str | None = None,
    push_token: str | None = None,
    send_token: str | None = None,
    group_id: str | None = None,
    campaign_token: str | None = None,
    reason: str | None = None,
    resent: bool = False,
) -> PushEventRow:
    return SendEvents(
        app_id=app_id,
        platform=platform,
        send_token=send_token,
        group_id=group_id,
        campaign_token=campaign_token,
    ).row(kind, occurred_at, install_id, custom_id, advertising_id, push_token, reason, resent)


@dataclass(frozen=True, slots=True, kw_only=True)
class SendEvents:
    """The event rows of one send's devices: what the send gives every row is read once, and
    a row costs one tuple (a worker writes one per push; push_event_row's keywords and the ORM
    attributes it was given cost ~2 µs a row)."""

    app_id: int
    platform: str
    send_token: str | None
    group_id: str | None
    campaign_token: str | None

    def row(
        self,
        kind: PushEventKind,
        occurred_at: datetime,
        install_id: str | None,
        custom_id: str | None,
        advertising_id: str | None,
        push_token: str | None,
        reason: str | None,
        resent: bool,
    ) -> PushEventRow:
        return (
            self.app_id,
            kind.value,
            occurred_at,
            self.platform,
            install_id,
            custom_id,
            advertising_id,
            push_token,
            self.send_token,
            self.group_id,
            self.campaign_token,
            reason[:1024] if reason else reason,
            resent,
        )


_COUNT_COLUMNS = (
    "app_id",
    "day",
    "campaign_token",
    "group_id",
    "send_token",
    "kind",
    "count",
    "folded",
)
_APP, _KIND, _OCCURRED_AT, _SEND, _GROUP, _CAMPAIGN, _RESENT, _PLATFORM, _REASON = (
    PUSH_EVENT_COLUMNS.index(name)
    for name in (
        "app_id",
        "kind",
        "occurred_at",
        "send_token",
        "group_id",
        "campaign_token",
        "resent",
        "platform",
        "reason",
    )
)
_OUTCOME = itemgetter(_PLATFORM, _KIND, _REASON, _RESENT)  # what the metrics count a row by
_COUNTED = frozenset(kind.value for kind in COUNTED_KINDS)
CountKey = tuple[int, str, str, str, str, str]  # _COUNT_COLUMNS up to kind


async def record_push_events(session: AsyncSession, rows: Sequence[PushEventRow]) -> None:
    """Appends the events, and the counts of those of campaigns and group_ids (PushEventCount),
    in the session's transaction: the counts never disagree with the log. A `push_sent` marked
    `resent` is counted as sent and, under RESENT_COUNT, as re-sent."""
    await bulk_insert(session, PushEvent.__tablename__, PUSH_EVENT_COLUMNS, rows)
    counts: Counter[CountKey] = Counter()
    days: dict[datetime, str] = {}  # the rows of one recording share a few times
    for row in rows:
        campaign, group = row[_CAMPAIGN] or "", row[_GROUP] or ""
        if (campaign or group) and row[_KIND] in _COUNTED:
            at = row[_OCCURRED_AT]
            day = days.get(at)
            if day is None:
                day = days[at] = at.astimezone(UTC).date().isoformat()
            # A campaign's send is its A/B version; a transactional send is one call.
            send = (row[_SEND] or "") if campaign else ""
            counts[(row[_APP], day, campaign, group, send, row[_KIND])] += 1
            if row[_RESENT] and row[_KIND] == PushEventKind.SENT.value:
                counts[(row[_APP], day, campaign, group, send, RESENT_COUNT)] += 1
    await _add_counts(session, counts, folded=False)
    # For the metrics (counted when the transaction commits): every outcome passes here.
    count_notifications(session, map(_OUTCOME, rows))


async def _add_counts(session: AsyncSession, counts: Counter[CountKey], *, folded: bool) -> None:
    await bulk_insert(
        session,
        PushEventCount.__tablename__,
        _COUNT_COLUMNS,
        [(*key, count, folded) for key, count in counts.items()],
    )


async def fold_event_counts(session: AsyncSession, *, subjects: int = 100) -> int:
    """Replaces the count rows of up to `subjects` campaigns or groups that have rows written
    since the last fold by one row per key; returns how many it folded.

    Only what this transaction deleted is summed (DELETE ... RETURNING): a row that a
    concurrent fold deleted first is not counted twice, and one written meanwhile is not
    seen by the DELETE and waits for the next fold."""
    subject = tuple_(PushEventCount.campaign_token, PushEventCount.group_id)
    found = await session.execute(
        select(PushEventCount.campaign_token, PushEventCount.group_id)
        .where(PushEventCount.folded.is_(False))
        .distinct()
        .limit(subjects)
    )
    pairs = [(campaign, group) for campaign, group in found]
    if not pairs:
        return 0
    count = PushEventCount
    deleted = await session.execute(
        delete(count)
        .where(subject.in_(pairs))
        .returning(
            count.app_id,
            count.day,
            count.campaign_token,
            count.group_id,
            count.send_token,
            count.kind,
            count.count,
        )
    )
    sums: Counter[CountKey] = Counter()
    for app_id, day, campaign, group, send, kind, number in deleted:
        sums[(app_id, day, campaign, group, send, kind)] += number
    await _add_counts(session, sums, folded=True)
    return len(pairs)


async def recount_push_events(session: AsyncSession) -> None:
    """Rebuilds every count from the event log, for events that were written around
    record_push_events (loaded in bulk, say): the log is the truth, the counts a copy."""
    await session.execute(delete(PushEventCount))
    campaign = func.coalesce(PushEvent.campaign_token, "")
    key = (
        PushEvent.app_id,
        utc_day(PushEvent.occurred_at),
        campaign,
        func.coalesce(PushEvent.group_id, ""),
        case((campaign == "", ""), else_=func.coalesce(PushEvent.send_token, "")),
        PushEvent.kind,
    )
    counted = (PushEvent.campaign_token.is_not(None)) | (PushEvent.group_id.is_not(None))
    await session.execute(
        insert(PushEventCount).from_select(
            list(_COUNT_COLUMNS),
            select(*key, func.count(), literal(True))
            .where(counted, PushEvent.kind.in_(_COUNTED))
            .group_by(*key),
        )
    )
    resent_key = (*key[:-1], literal(RESENT_COUNT))
    await session.execute(
        insert(PushEventCount).from_select(
            list(_COUNT_COLUMNS),
            select(*resent_key, func.count(), literal(True))
            .where(
                counted,
                PushEvent.kind == PushEventKind.SENT.value,
                PushEvent.resent.is_(true()),
            )
            .group_by(*key[:-1]),
        )
    )


async def record_inapp_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(InAppEvent), list(rows))


_TRACKED_COLUMNS = (
    "app_id",
    "occurred_at",
    "install_id",
    "custom_id",
    "name",
    "label",
    "attributes",
    "tags",
)


async def record_tracked_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Through the driver (bulk_insert): SQLAlchemy's insert() of a list of dicts took a quarter
    of the SDK API's CPU per 10-event call (bench/sdk_events.py). The JSON columns are written
    as their text, as the JSON type writes them (None is SQL NULL); each row's tuple is built
    field by field (a generator over the columns was 2 us of a Trigger Events event's ~8)."""
    time = bulk_times(session)
    await bulk_insert(
        session,
        TrackedEvent.__tablename__,
        _TRACKED_COLUMNS,
        [
            (
                row["app_id"],
                time(row["occurred_at"]),
                row.get("install_id"),
                row.get("custom_id"),
                row["name"],
                row.get("label"),
                json_text(row.get("attributes")),
                json_text(row.get("tags")),
            )
            for row in rows
        ],
    )


@dataclass(frozen=True, slots=True)
class TrackedCall:
    """A Trigger Events call stored: the token naming it, as Batch does (logged, not stored),
    and the rows written (what automations match)."""

    token: str
    rows: list[dict[str, Any]]


async def track_user_events(
    session: AsyncSession,
    *,
    app_id: int,
    users: Sequence[tuple[str, Sequence[ServerEventIn]]],
    now: datetime,
) -> TrackedCall:
    """Store server-side events (Trigger Events API) on custom user ids, beside the SDK's events
    (same table, `ue.` names), whether or not an installation carries the id yet."""
    # Users removed by a GDPR request: their events are ignored for a while.
    blocked = await blocked_values(
        session,
        app_id=app_id,
        id_type=IdType.CUSTOM_ID,
        values=(custom_id for custom_id, _ in users),
        now=now,
    )
    rows = [
        {
            "app_id": app_id,
            "occurred_at": event.time or now,
            "install_id": None,
            "custom_id": custom_id,
            "name": event.name,
            "label": event.label,
            "attributes": event.attributes,
            "tags": event.tags,
        }
        for custom_id, events in users
        if custom_id not in blocked
        for event in events
    ]
    await record_tracked_events(session, rows)
    token = str(uuid.uuid4())
    log.info("trigger events call %s stored %d events for app %d", token, len(rows), app_id)
    return TrackedCall(token, rows)
