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
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.db import bulk_insert, is_postgres, rowcount, transaction
from clarion.events.models import InAppEventKind
from clarion.inapp.eligibility import Clock, Handout, InAppFeed
from clarion.inapp.service import current_revisions

log = logging.getLogger(__name__)

# How often each is run (clarion.runtime): a change reaches installations within about
# POLL_SECONDS plus one fetch.
POLL_SECONDS = 1.0
FLUSH_SECONDS = 1.0
# Campaigns handed out held in memory before new handouts are dropped (a database that stays
# down): ~100 bytes each. A dropped one is counted at the installation's next answer that
# differs from the one this process remembers.
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
        # Expanded and deduplicated at the flush: a fetch only appends (~1 µs, against ~0.2 ms
        # for a record per campaign of an 80-message answer).
        self._pending: list[tuple[Handout, datetime]] = []
        self._campaigns = 0
        self._lock = asyncio.Lock()

    def record(self, handout: Handout) -> None:
        if self._campaigns < MAX_PENDING:
            self._pending.append((handout, self.clock()))
            self._campaigns += len(handout.campaigns)

    @property
    def pending(self) -> int:
        return self._campaigns

    async def flush(self) -> int:
        """Write what is pending; returns how many handouts were new (events written)."""
        async with self._lock:
            if not self._pending:
                return 0
            taken, self._pending, self._campaigns = self._pending, [], 0
            try:
                async with transaction(self._sessions) as session:
                    return await _write(session, _rows(taken))
            except BaseException:
                # Kept for the next flush, before those recorded meanwhile.
                self._pending[:0] = taken
                self._campaigns += sum(len(handout.campaigns) for handout, _ in taken)
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


def _rows(handouts: list[tuple[Handout, datetime]]) -> list[tuple[Any, ...]]:
    """One staged row (in _STAGED's order) per campaign and installation, the first handout's."""
    seen: set[tuple[int, int]] = set()
    rows: list[tuple[Any, ...]] = []
    for handout, at in handouts:
        for campaign_id, token, version in handout.campaigns:
            key = (campaign_id, handout.installation_id)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                (
                    campaign_id,
                    handout.installation_id,
                    version,
                    at,
                    handout.app_id,
                    handout.platform,
                    handout.install_id,
                    handout.custom_id,
                    handout.advertising_id,
                    token,
                )
            )
    return rows


async def _write(session: AsyncSession, rows: list[tuple[Any, ...]]) -> int:
    """Stage the handouts (COPY on PostgreSQL), then insert the supplies that are new and one
    `inapp_supplied` event for each, in the session's transaction. Measured: see
    docs/decisions/0021-inapp-eligibility.md."""
    kind = {"kind": InAppEventKind.SUPPLIED.value}
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
