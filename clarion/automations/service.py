"""Automations: events enter users, cancel events cancel their entries, a paused automation
stops its pending ones. No HTTP here. (The dispatcher that sends due entries: tasks.py.)"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.automations.models import ENTRIES, EntryState
from clarion.campaigns.models import Campaign, CampaignState

# Why a paused (or deleted) automation's pending entries were cancelled.
PAUSED = "paused"


async def settle_entries(session: AsyncSession, campaign: Campaign, *, now: datetime) -> int:
    """After an automation was updated, paused or deleted: unless it is still active, its
    pending entries are cancelled (a paused automation stops them; set live again, it enters
    users anew). Returns how many were cancelled; nothing for a campaign without a trigger."""
    if "trigger" not in campaign.body or (
        campaign.state == CampaignState.ACTIVE.value and campaign.deleted_at is None
    ):
        return 0
    result = await session.execute(
        update(ENTRIES)
        .where(ENTRIES.c.campaign_id == campaign.id, ENTRIES.c.state == EntryState.PENDING.value)
        .values(state=EntryState.CANCELLED.value, reason=PAUSED, finished_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
