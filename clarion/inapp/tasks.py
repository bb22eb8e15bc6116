"""Background work of the in-app fetch, in every process that serves the SDK API.

- RevisionPoller: reads every app's in-app revision about once a second, so that a campaign
  created, changed or deleted through any process reaches installations within seconds
  (clarion.inapp.eligibility rebuilds the catalogue of an app whose revision moved).
- SupplyWriter: what full fetches handed out, kept in memory and written once a second in
  bulk: `INSERT ... ON CONFLICT DO NOTHING` into inapp_supplies, and one `inapp_supplied` event
  for each row that was new, so that an installation is counted once per campaign however often
  it asks. Flushed on shutdown; a crash loses at most the last second's first handouts.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.db import insert_ignoring_conflicts, transaction
from clarion.events.models import InAppEventKind
from clarion.events.service import record_inapp_events
from clarion.inapp.eligibility import Clock, InAppFeed, Supply
from clarion.inapp.models import InAppSupply
from clarion.inapp.service import current_revisions

log = logging.getLogger(__name__)

# How often each is run (clarion.runtime): a change reaches installations within about
# POLL_SECONDS plus one fetch.
POLL_SECONDS = 1.0
FLUSH_SECONDS = 1.0
# Rows per INSERT: 3 parameters a row, well under both databases' parameter limits.
_CHUNK = 5_000
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


async def _write(session: AsyncSession, handouts: list[tuple[Supply, datetime]]) -> int:
    table: Table = InAppSupply.__table__  # type: ignore[assignment]
    new: set[tuple[int, int]] = set()
    for first in range(0, len(handouts), _CHUNK):
        chunk = handouts[first : first + _CHUNK]
        statement = (
            insert_ignoring_conflicts(session, table, index=["campaign_id", "installation_id"])
            .values(
                [
                    {
                        "campaign_id": supply.campaign_id,
                        "installation_id": supply.installation_id,
                        "version": supply.version,
                        "supplied_at": at,
                    }
                    for supply, at in chunk
                ]
            )
            .returning(table.c.campaign_id, table.c.installation_id)
        )
        inserted = await session.execute(statement)
        new.update((campaign, installation) for campaign, installation in inserted)
    events = [
        {
            "app_id": supply.app_id,
            "kind": InAppEventKind.SUPPLIED.value,
            "occurred_at": at,
            "platform": supply.platform,
            "install_id": supply.install_id,
            "custom_id": supply.custom_id,
            "advertising_id": supply.advertising_id,
            "campaign_id": supply.campaign_token,
            "cta_position": None,
            "cta_label": None,
            "version": supply.version,
        }
        for supply, at in handouts
        if (supply.campaign_id, supply.installation_id) in new
    ]
    await record_inapp_events(session, events)
    return len(events)
