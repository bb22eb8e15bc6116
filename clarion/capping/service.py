"""Capping: which installations a push may still reach under the app's caps, and the receipts
of the pushes that count. No HTTP here.

A cap is "at most `max` pushes in `hours`" under one key: `automations` (the app's global cap,
counted over every automation's pushes) or `label:<code>` (pushes of any automation or
scheduled campaign carrying that label). A push counts when it is written into the delivery
outbox, in the same transaction as its receipt. Two writers spending the same cap (two
campaigns of one label fanning out at once, a campaign and an automation) must not both see
room for the same last push: each takes `lock_caps` in its transaction before it checks
(`capped`, or `under_caps_clause` in the query that reads a fan-out page) and writes receipts,
so the second one's check sees the first one's receipts (docs/decisions/0028-push-caps.md).
Receipts are kept only for the caps configured when the push went out: a cap added later starts
counting from then.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, and_, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from clarion.apps.models import App
from clarion.capping.models import AUTOMATIONS_KEY, RECEIPTS
from clarion.capping.models import MAX_CAP_HOURS as MAX_CAP_HOURS  # callers read it here too
from clarion.capping.schemas import CapRead, PushCapsIn, PushCapsRead
from clarion.db import bulk_insert, in_values, is_postgres, uses_arrays

# pg_advisory_xact_lock's first key for lock_caps: "capp".
_LOCK_CLASS = 0x63617070


@dataclass(frozen=True)
class Cap:
    key: str
    max: int
    hours: int

    def since(self, now: datetime) -> datetime:
        return now - timedelta(hours=self.hours)


def label_key(label: str) -> str:
    return f"label:{label}"


def caps_for(push_caps: Mapping[str, Any], *, automation: bool, labels: Iterable[str]) -> list[Cap]:
    """The caps a push counts against, from the app's `push_caps`: the global one for an
    automation's push, and one per label of the push that has a cap."""
    caps: list[Cap] = []
    overall = push_caps.get("automations")
    if automation and overall:
        caps.append(Cap(AUTOMATIONS_KEY, int(overall["max"]), int(overall["hours"])))
    by_label = push_caps.get("labels") or {}
    for label in dict.fromkeys(labels):
        found = by_label.get(label)
        if found:
            caps.append(Cap(label_key(label), int(found["max"]), int(found["hours"])))
    return caps


async def capped(
    session: AsyncSession,
    *,
    app_id: int,
    caps: Sequence[Cap],
    installation_ids: Sequence[int],
    now: datetime,
) -> dict[int, str]:
    """The installations among `installation_ids` that have reached one of `caps`, each with
    the key of the first it reached. One grouped query per cap over the receipts index."""
    reached: dict[int, str] = {}
    if not caps or not installation_ids:
        return reached
    array = uses_arrays(session)
    for cap in caps:
        rows = await session.execute(
            select(RECEIPTS.c.installation_id)
            .where(
                RECEIPTS.c.app_id == app_id,
                RECEIPTS.c.key == cap.key,
                in_values(RECEIPTS.c.installation_id, "ids", BigInteger(), array=array),
                RECEIPTS.c.sent_at > cap.since(now),
            )
            .group_by(RECEIPTS.c.installation_id)
            .having(func.count() >= cap.max),
            {"ids": list(installation_ids)},
        )
        for (installation_id,) in rows:
            reached.setdefault(installation_id, cap.key)
    return reached


def under_caps_clause(
    *, app_id: int, caps: Sequence[Cap], installation_id: Any, now: datetime
) -> ColumnElement[bool] | None:
    """For SQL that selects installations (a campaign's fan-out page): true for those that
    have room under every cap; None without caps. `installation_id`: the column to test."""
    if not caps:
        return None
    clauses = []
    for cap in caps:
        count = (
            select(func.count())
            .where(
                RECEIPTS.c.app_id == app_id,
                RECEIPTS.c.key == cap.key,
                RECEIPTS.c.installation_id == installation_id,
                RECEIPTS.c.sent_at > cap.since(now),
            )
            .scalar_subquery()
        )
        clauses.append(count < cap.max)
    return and_(*clauses)


async def record_receipts(
    session: AsyncSession,
    *,
    app_id: int,
    caps: Sequence[Cap],
    installation_ids: Iterable[int],
    now: datetime,
) -> None:
    """One receipt per installation and cap, in the caller's transaction (the one writing the
    pushes into the outbox)."""
    if not caps:
        return
    rows = [
        (app_id, installation_id, cap.key, now)
        for installation_id in installation_ids
        for cap in caps
    ]
    await bulk_insert(session, RECEIPTS.name, ("app_id", "installation_id", "key", "sent_at"), rows)


async def lock_caps(session: AsyncSession, *, app_id: int, caps: Sequence[Cap]) -> None:
    """Serialise, until the caller's transaction ends, the transactions that check and spend
    these caps of this app: take it before `capped` and `record_receipts`. PostgreSQL: one
    advisory lock per key, always in the same order so that two writers of overlapping caps wait
    for each other rather than deadlock (a hash collision only serialises more). SQLite has one
    connection, whose transactions are serialised already."""
    if not caps or not is_postgres(session):
        return
    for lock in sorted({_lock_key(app_id, cap.key) for cap in caps}):
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:kind, :key)"), {"kind": _LOCK_CLASS, "key": lock}
        )


def _lock_key(app_id: int, key: str) -> int:
    digest = zlib.crc32(f"{app_id}:{key}".encode())
    return digest - (1 << 32) if digest >= 1 << 31 else digest  # an int4, as PostgreSQL takes


async def purge_receipts(session: AsyncSession, *, before: datetime, limit: int = 10_000) -> int:
    """Delete at most `limit` receipts older than any cap can look back (the caller passes now
    minus MAX_CAP_HOURS), the oldest first, and say how many went: a caller deletes in short
    transactions until fewer than `limit` go, so that no purge holds locks (or SQLite's one
    connection) for long."""
    # The ids first, then a delete by primary key: `id IN (SELECT … LIMIT)` in one statement
    # was planned as a hash semi-join over a sequential scan of the whole table (555 ms for
    # 10,000 of 2M receipts on PostgreSQL).
    ids = list(
        await session.scalars(
            select(RECEIPTS.c.id)
            .where(RECEIPTS.c.sent_at < before)
            .order_by(RECEIPTS.c.sent_at)
            .limit(limit)
        )
    )
    if not ids:
        return 0
    array = uses_arrays(session)
    await session.execute(
        delete(RECEIPTS).where(in_values(RECEIPTS.c.id, "ids", BigInteger(), array=array)),
        {"ids": ids},
    )
    return len(ids)


# The app's setting ------------------------------------------------------------------------------


def push_caps_of(app: App) -> PushCapsRead:
    stored = app.push_caps or {}
    overall = stored.get("automations")
    return PushCapsRead(
        automations=CapRead(**overall) if overall else None,
        labels={code: CapRead(**cap) for code, cap in (stored.get("labels") or {}).items()},
    )


def set_push_caps(app: App, caps: PushCapsIn) -> PushCapsRead:
    """Replace the app's push caps (validated by PushCapsIn). Pushes written from now on count
    against them; the receipts of earlier pushes count only for caps that existed then."""
    stored: dict[str, Any] = {}
    if caps.automations is not None:
        stored["automations"] = caps.automations.model_dump()
    if caps.labels:
        stored["labels"] = {code: cap.model_dump() for code, cap in caps.labels.items()}
    app.push_caps = stored
    return push_caps_of(app)
