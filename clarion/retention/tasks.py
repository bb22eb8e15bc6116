"""What runs in the background for retention (docs/retention.md): every RETENTION_SECONDS,
in every process that runs workers (clarion.runtime), the event log's expired days go and, on
PostgreSQL, the days ahead get their partitions."""

from __future__ import annotations

import logging
from datetime import UTC, date, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.config import Settings
from clarion.retention.partitions import Upkeep, keep_partitions
from clarion.retention.service import EVENT_LOGS, SQLITE_BATCH, delete_before, keep_from

log = logging.getLogger(__name__)

# Hourly: a day is dropped at most an hour after it expires, and the week of partitions ahead
# leaves 7 days for a pass to succeed before a row would land in `future` (and be moved back).
RETENTION_SECONDS = 3600.0
PARTITION_DAYS_AHEAD = 7


class EventRetention:
    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        sqlite_batch: int = SQLITE_BATCH,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._settings = settings
        self._clock = clock
        self._sqlite_batch = sqlite_batch

    async def run(self) -> dict[str, Upkeep] | dict[str, int] | None:
        """One pass: on PostgreSQL each table's Upkeep (None when another process is at it), on
        SQLite the rows deleted per table."""
        now = self._clock()
        async with self._sessions() as session:
            first: dict[str, date | None] = {
                event_log.table: await keep_from(
                    session, event_log, days=event_log.setting(self._settings), now=now
                )
                for event_log in EVENT_LOGS
            }
        if self._engine.dialect.name == "postgresql":
            ahead = now.astimezone(UTC).date() + timedelta(days=PARTITION_DAYS_AHEAD)
            done = await keep_partitions(
                self._engine, {table: (day, ahead) for table, day in first.items()}
            )
            for table, upkeep in (done or {}).items():
                if upkeep.dropped:
                    log.info(
                        "%s: dropped the days %s (detached in %.3f s, files freed in %.3f s)",
                        table,
                        [str(day) for day in upkeep.dropped],
                        upkeep.detaching,
                        upkeep.dropping,
                    )
            return done
        deleted: dict[str, int] = {}
        for event_log in EVENT_LOGS:
            day = first[event_log.table]
            if day is not None:
                deleted[event_log.table] = await delete_before(
                    self._sessions, event_log, day, batch=self._sqlite_batch
                )
        return deleted
