"""Writing the event log, always in bulk (one executemany per batch of rows)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.events.models import InAppEvent, PushEvent, PushEventKind, TrackedEvent

PushEventRow = dict[str, Any]


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
    return {
        "app_id": app_id,
        "kind": kind.value,
        "occurred_at": occurred_at,
        "platform": platform,
        "install_id": install_id,
        "custom_id": custom_id,
        "advertising_id": advertising_id,
        "push_token": push_token,
        "send_token": send_token,
        "group_id": group_id,
        "campaign_token": campaign_token,
        "reason": reason[:1024] if reason else reason,
    }


async def record_push_events(session: AsyncSession, rows: Sequence[PushEventRow]) -> None:
    if rows:
        await session.execute(insert(PushEvent), list(rows))


async def record_inapp_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(InAppEvent), list(rows))


async def record_tracked_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(TrackedEvent), list(rows))
