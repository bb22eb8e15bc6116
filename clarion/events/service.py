"""Writing the event log, always in bulk (one executemany per batch of rows), and the
Trigger Events API's server-side events."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.db import bulk_insert, utc_day, utcnow
from clarion.events.models import (
    COUNTED_KINDS,
    CampaignEventCount,
    InAppEvent,
    PushEvent,
    PushEventKind,
    TrackedEvent,
)
from clarion.events.schemas import ServerEventIn
from clarion.gdpr.models import IdType
from clarion.gdpr.service import blocked_values

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
) -> PushEventRow:
    return (
        app_id,
        kind.value,
        occurred_at,
        platform,
        install_id,
        custom_id,
        advertising_id,
        push_token,
        send_token,
        group_id,
        campaign_token,
        reason[:1024] if reason else reason,
    )


_COUNT_COLUMNS = ("campaign_token", "day", "send_token", "kind", "count", "folded")
_KIND, _OCCURRED_AT, _SEND_TOKEN, _CAMPAIGN_TOKEN = (
    PUSH_EVENT_COLUMNS.index(name)
    for name in ("kind", "occurred_at", "send_token", "campaign_token")
)
_COUNTED = frozenset(kind.value for kind in COUNTED_KINDS)


async def record_push_events(session: AsyncSession, rows: Sequence[PushEventRow]) -> None:
    """Appends the events, and the counts of their campaigns' events (see CampaignEventCount),
    in the session's transaction: the counts never disagree with the log."""
    await bulk_insert(session, PushEvent.__tablename__, PUSH_EVENT_COLUMNS, rows)
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for row in rows:
        if row[_CAMPAIGN_TOKEN] and row[_KIND] in _COUNTED:
            day = row[_OCCURRED_AT].astimezone(UTC).date().isoformat()
            counts[(row[_CAMPAIGN_TOKEN], day, row[_SEND_TOKEN] or "", row[_KIND])] += 1
    await bulk_insert(
        session,
        CampaignEventCount.__tablename__,
        _COUNT_COLUMNS,
        [(*key, count, False) for key, count in counts.items()],
    )


async def fold_event_counts(session: AsyncSession, *, campaigns: int = 100) -> int:
    """Replaces the count rows of up to `campaigns` campaigns written since the last fold by
    one row per (campaign, day, send, kind); returns how many campaigns were folded.

    Only what this transaction deleted is summed (DELETE ... RETURNING): a row that a
    concurrent fold deleted first is not counted twice, and one written meanwhile is not
    seen by the DELETE and waits for the next fold."""
    tokens = list(
        await session.scalars(
            select(CampaignEventCount.campaign_token)
            .where(CampaignEventCount.folded.is_(False))
            .distinct()
            .limit(campaigns)
        )
    )
    if not tokens:
        return 0
    deleted = await session.execute(
        delete(CampaignEventCount)
        .where(CampaignEventCount.campaign_token.in_(tokens))
        .returning(
            CampaignEventCount.campaign_token,
            CampaignEventCount.day,
            CampaignEventCount.send_token,
            CampaignEventCount.kind,
            CampaignEventCount.count,
        )
    )
    sums: Counter[tuple[str, str, str, str]] = Counter()
    for token, day, send_token, kind, count in deleted:
        sums[(token, day, send_token, kind)] += count
    await bulk_insert(
        session,
        CampaignEventCount.__tablename__,
        _COUNT_COLUMNS,
        [(*key, count, True) for key, count in sums.items()],
    )
    return len(tokens)


async def recount_campaign_events(session: AsyncSession) -> None:
    """Rebuilds every campaign's counts from the event log, for events that were written
    around record_push_events (loaded in bulk, say): the log is the truth, the counts a copy."""
    await session.execute(delete(CampaignEventCount))
    day = utc_day(PushEvent.occurred_at)
    send_token = func.coalesce(PushEvent.send_token, "")
    await session.execute(
        insert(CampaignEventCount).from_select(
            list(_COUNT_COLUMNS),
            select(
                PushEvent.campaign_token,
                day,
                send_token,
                PushEvent.kind,
                func.count(),
                literal(True),
            )
            .where(PushEvent.campaign_token.is_not(None), PushEvent.kind.in_(_COUNTED))
            .group_by(PushEvent.campaign_token, day, send_token, PushEvent.kind),
        )
    )


async def record_inapp_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(InAppEvent), list(rows))


async def record_tracked_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(TrackedEvent), list(rows))


async def track_user_events(
    session: AsyncSession, *, app_id: int, users: Sequence[tuple[str, Sequence[ServerEventIn]]]
) -> str:
    """Store server-side events (Trigger Events API) on custom user ids, beside the SDK's events
    (same table, `ue.` names), whether or not an installation carries the id yet. Returns a token
    naming the call, as Batch does; it is logged, not stored."""
    now = utcnow()
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
    return token
