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
from clarion.retention.service import (
    EVENT_LOGS,
    POSTGRES_BATCH,
    SQLITE_BATCH,
    delete_before,
    keep_from,
)

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

    async def run(self) -> dict[str, Upkeep | int] | None:
        """One pass: each partitioned table's Upkeep, the rows deleted from the others (all of
        them on SQLite); None when another process is at it."""
        now = self._clock()
        async with self._sessions() as session:
            first: dict[str, date | None] = {
                event_log.table: await keep_from(
                    session, event_log, days=event_log.setting(self._settings), now=now
                )
                for event_log in EVENT_LOGS
            }
        postgres = self._engine.dialect.name == "postgresql"
        done: dict[str, Upkeep | int] = {}
        if postgres:
            ahead = now.astimezone(UTC).date() + timedelta(days=PARTITION_DAYS_AHEAD)
            partitioned = await keep_partitions(
                self._engine,
                {log.table: (first[log.table], ahead) for log in EVENT_LOGS if log.partitioned},
            )
            if partitioned is None:
                return None  # another process is at it
            for table, upkeep in partitioned.items():
                if upkeep.dropped:
                    log.info(
                        "%s: dropped the days %s (detached in %.3f s, files freed in %.3f s)",
                        table,
                        [str(day) for day in upkeep.dropped],
                        upkeep.detaching,
                        upkeep.dropping,
                    )
            done.update(partitioned)
        for event_log in EVENT_LOGS:
            day = first[event_log.table]
            if day is not None and not (postgres and event_log.partitioned):
                done[event_log.table] = await delete_before(
                    self._sessions,
                    event_log,
                    day,
                    batch=POSTGRES_BATCH if postgres else self._sqlite_batch,
                )
        return done
