"""What runs in the background for capping: receipts older than the longest cap are purged
(clarion.runtime repeats it in every process that runs workers)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.capping.models import MAX_CAP_HOURS
from clarion.capping.service import purge_receipts
from clarion.db import transaction, utcnow
from clarion.health import beat

# Every hour: a receipt then outlives the longest cap (30 days) by at most an hour, 0.14 % more
# rows than needed.
PURGE_SECONDS = 3600.0
# Receipts deleted per transaction: 10,000 of 2M went in ~190 ms on PostgreSQL (this loaded
# 2-core machine; docs/decisions/0028-push-caps.md), so a purge of a 1M-installation campaign's
# receipts takes ~100 short transactions and never holds a lock, or SQLite's one connection,
# for long.
PURGE_BATCH = 10_000


async def purge_expired_receipts(
    sessions: async_sessionmaker[AsyncSession],
    *,
    clock: Callable[[], datetime] = utcnow,
    batch: int = PURGE_BATCH,
) -> int:
    """Delete the receipts no cap can count any more, `batch` per transaction; how many went."""
    before = clock() - timedelta(hours=MAX_CAP_HOURS)
    purged = 0
    while True:
        beat()  # a long purge is progress (clarion.health)
        async with transaction(sessions) as session:
            deleted = await purge_receipts(session, before=before, limit=batch)
        purged += deleted
        if deleted < batch:
            return purged
