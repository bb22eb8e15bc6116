"""Writing the event log, always in bulk (one executemany per batch of rows)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.db import bulk_insert
from clarion.events.models import InAppEvent, PushEvent, PushEventKind, TrackedEvent

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
