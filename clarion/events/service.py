"""Writing the event log, always in bulk (one executemany per batch of rows), and the
Trigger Events API's server-side events."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.db import bulk_insert, utcnow
from clarion.events.models import InAppEvent, PushEvent, PushEventKind, TrackedEvent
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


async def record_push_events(session: AsyncSession, rows: Sequence[PushEventRow]) -> None:
    await bulk_insert(session, PushEvent.__tablename__, PUSH_EVENT_COLUMNS, rows)


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
