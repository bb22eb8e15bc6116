"""Background work of the in-app fetch, in every process that serves the SDK API.

- RevisionPoller: reads every app's in-app revision about once a second, so that a campaign
  created, changed or deleted through any process reaches installations within seconds
  (clarion.inapp.eligibility rebuilds the catalogue of an app whose revision moved).
- SupplyWriter: what full fetches handed out, kept in memory and written once a second in
  bulk: `INSERT ... ON CONFLICT DO NOTHING` into inapp_supplies, and one `inapp_supplied` event
  (in inapp_events, the campaign's token as campaign_id) for each row that was new, so that an
  installation is counted once per campaign however often it asks. Flushed on shutdown; a
  crash loses at most the last second's first handouts.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.db import bulk_insert, is_postgres, rowcount, transaction
from clarion.events.models import InAppEventKind
from clarion.inapp.eligibility import Clock, InAppFeed, Supply
from clarion.inapp.service import current_revisions

log = logging.getLogger(__name__)

# How often each is run (clarion.runtime): a change reaches installations within about
# POLL_SECONDS plus one fetch.
POLL_SECONDS = 1.0
FLUSH_SECONDS = 1.0
# Handouts held in memory before new ones are dropped (a database that stays down): ~200 bytes
# each. Dropped ones are counted again at the installation's next answer that differs.
MAX_PENDING = 500_000


class RevisionPoller:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], feed: InAppFeed) -> None:
        self._sessions = sessions
        self._feed = feed

    async def tick(self) -> None:
        async with self._sessions() as session:
            revisions = await current_revisions(session)
        self._feed.revisions_read(revisions)


class SupplyWriter:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self.clock = clock
        # (campaign id, installation id) -> the handout and when it happened; later handouts
        # of the same pair before a flush change nothing.
        self._pending: dict[tuple[int, int], tuple[Supply, datetime]] = {}
        self._lock = asyncio.Lock()

    def record(self, supplies: list[Supply]) -> None:
        now = self.clock()
        for supply in supplies:
            key = (supply.campaign_id, supply.installation_id)
            if key not in self._pending and len(self._pending) < MAX_PENDING:
                self._pending[key] = (supply, now)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write what is pending; returns how many handouts were new (events written)."""
        async with self._lock:
            if not self._pending:
                return 0
            taken = self._pending
            self._pending = {}
            try:
                async with transaction(self._sessions) as session:
                    return await _write(session, list(taken.values()))
            except BaseException:
                # Kept for the next flush (those recorded meanwhile stay too).
                for key, value in taken.items():
                    self._pending.setdefault(key, value)
                raise


_STAGED = (
    "campaign_id",
    "installation_id",
    "version",
    "supplied_at",
    "app_id",
    "platform",
    "install_id",
    "custom_id",
    "advertising_id",
    "campaign_token",
)
_STAGED_TABLE = """staged_supplies (
    campaign_id BIGINT, installation_id BIGINT, version VARCHAR(8), supplied_at TIMESTAMP,
    app_id BIGINT, platform VARCHAR(10), install_id VARCHAR(128), custom_id VARCHAR(512),
    advertising_id VARCHAR(64), campaign_token VARCHAR(64))"""
# Handouts of campaigns that still exist (a campaign row removed since would fail the
# foreign key, and with it every later flush).
_KNOWN = "EXISTS (SELECT 1 FROM inapp_campaigns c WHERE c.id = s.campaign_id)"
_NEW_SUPPLIES = f"""INSERT INTO inapp_supplies (campaign_id, installation_id, version, supplied_at)
    SELECT s.campaign_id, s.installation_id, s.version, s.supplied_at
    FROM staged_supplies s WHERE {_KNOWN}
    ON CONFLICT DO NOTHING"""
_EVENT_COLUMNS = """INSERT INTO inapp_events
    (app_id, kind, occurred_at, platform, install_id, custom_id, advertising_id, campaign_id,
     version)
    SELECT s.app_id, :kind, s.supplied_at, s.platform, s.install_id, s.custom_id,
        s.advertising_id, s.campaign_token, s.version"""


async def _write(session: AsyncSession, handouts: list[tuple[Supply, datetime]]) -> int:
    """Stage the handouts (COPY on PostgreSQL), then insert the supplies that are new and one
    `inapp_supplied` event for each, in the session's transaction. Measured: see
    docs/decisions/0021-inapp-eligibility.md."""
    kind = {"kind": InAppEventKind.SUPPLIED.value}
    rows = [
        (
            supply.campaign_id,
            supply.installation_id,
            supply.version,
            at,
            supply.app_id,
            supply.platform,
            supply.install_id,
            supply.custom_id,
            supply.advertising_id,
            supply.campaign_token,
        )
        for supply, at in handouts
    ]
    if is_postgres(session):
        await session.execute(text(f"CREATE TEMPORARY TABLE {_STAGED_TABLE} ON COMMIT DROP"))
        await bulk_insert(session, "staged_supplies", _STAGED, rows)
        # One statement: only the rows this INSERT wrote come back, so a pair that two
        # processes flush at once is counted by one of them.
        result = await session.execute(
            text(
                f"WITH new AS ({_NEW_SUPPLIES} RETURNING campaign_id, installation_id) "
                f"{_EVENT_COLUMNS} FROM new JOIN staged_supplies s "
                "USING (campaign_id, installation_id)"
            ),
            kind,
        )
        return rowcount(result)
    # SQLite has no INSERT in a WITH, and one writer at a time: the events of the pairs not
    # yet there, then the pairs.
    await session.execute(text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGED_TABLE}"))
    await session.execute(text("DELETE FROM staged_supplies"))
    await bulk_insert(session, "staged_supplies", _STAGED, rows)
    result = await session.execute(
        text(
            f"{_EVENT_COLUMNS} FROM staged_supplies s WHERE {_KNOWN} AND NOT EXISTS ("
            "SELECT 1 FROM inapp_supplies p WHERE p.campaign_id = s.campaign_id"
            " AND p.installation_id = s.installation_id)"
        ),
        kind,
    )
    await session.execute(text(_NEW_SUPPLIES))
    await session.execute(text("DELETE FROM staged_supplies"))
    return rowcount(result)
