"""Capping: which installations a push may still reach under the app's caps, and the receipts
of the pushes that count. No HTTP here.

A cap is "at most `max` pushes in `hours`" under one key: `automations` (the app's global cap,
counted over every automation's pushes) or `label:<code>` (pushes of any automation or
scheduled campaign carrying that label). A push counts when it is written into the delivery
outbox, in the same transaction as its receipt, so two workers cannot both see room for the
same last push once their transactions are serialised by the caller (the automation dispatcher
claims entries with row locks; a campaign fan-out page is written by its one lease holder).
Receipts are kept only for the caps configured when the push went out: a cap added later starts
counting from then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from clarion.capping.models import AUTOMATIONS_KEY, RECEIPTS
from clarion.db import bulk_insert, in_values, uses_arrays


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


async def purge_receipts(session: AsyncSession, *, before: datetime) -> int:
    """Receipts older than any cap can look back: the caller passes now minus the longest
    period it allows (MAX_CAP_HOURS)."""
    result = await session.execute(delete(RECEIPTS).where(RECEIPTS.c.sent_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


# The longest period a cap may have: 30 days, as the longest automation delay.
MAX_CAP_HOURS = 30 * 24
