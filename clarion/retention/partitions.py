"""The event log's day partitions on PostgreSQL (decision 0041): created ahead, dropped once
expired, without blocking a writer.

Each event table is partitioned by range of `occurred_at`:

    {table}_past_YYYYMMDD     MINVALUE .. that day        rows older than every day kept
    {table}_pYYYYMMDD         one per UTC day, contiguous
    {table}_future_YYYYMMDD   that day .. MAXVALUE        rows later than every day created

so that a row of any time lands somewhere (an SDK event kept offline for months, a clock set
wrong), and there is no DEFAULT partition: PostgreSQL refuses `DETACH PARTITION ...
CONCURRENTLY` on a table that has one, and a plain DETACH or DROP takes an ACCESS EXCLUSIVE lock
on the parent, which waits for every open transaction that wrote to it and makes every writer
wait behind it.

Dropping days D0..Dn (all before the first day kept, D): the rows of `past` are older than D0,
so expired too. A new empty `past` (MINVALUE .. D) replaces it: DETACH CONCURRENTLY the old
`past` and D0..Dn (SHARE UPDATE EXCLUSIVE on the parent: writers go on), ATTACH the new one
(same lock; nothing to scan in an empty table), then DROP the detached tables, which no query
reaches any more. Between the DETACH and the ATTACH, a few milliseconds, a row older than D
finds no partition: only an event that old, already past its retention, can fail then.
Creating days ahead shrinks `future` the same way (its rows, normally none, are moved back
through the parent).

`DETACH ... CONCURRENTLY` runs outside a transaction: the work runs on a connection in
autocommit, under a session advisory lock so that one process at a time does it. A process that
dies half-way leaves a detach pending or detached tables: `reconcile` finishes both first.
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import cast

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

_LOCK_KEY = zlib.crc32(b"clarion.retention.partitions")
_NAME = re.compile(r"^(?P<table>[a-z_]+?)_(?P<kind>p|past_|future_)(?P<day>\d{8})$")


def day_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def past_name(table: str, bound: date) -> str:
    return f"{table}_past_{bound:%Y%m%d}"


def future_name(table: str, bound: date) -> str:
    return f"{table}_future_{bound:%Y%m%d}"


def _bound(day: date) -> str:
    return f"'{day.isoformat()} 00:00:00+00'"


@dataclass
class Layout:
    """A table's partitions, as the catalogue lists them."""

    days: list[date] = field(default_factory=list)
    past: tuple[str, date] | None = None
    future: tuple[str, date] | None = None
    detaching: list[str] = field(default_factory=list)  # a DETACH CONCURRENTLY cut short


@dataclass
class Upkeep:
    """What one pass did to a table."""

    created: list[date] = field(default_factory=list)
    dropped: list[date] = field(default_factory=list)
    moved: int = 0  # rows moved out of `future` (written while no day was ready for them)
    # Seconds from the first DETACH to the ATTACH of the new `past` (the expired days leave the
    # table), then to the end of the DROPs (their files freed): logged, and what the benchmark
    # reports. Neither makes a writer wait.
    detaching: float = 0.0
    dropping: float = 0.0


async def layout(connection: AsyncConnection, table: str) -> Layout:
    found = Layout()
    rows = await connection.exec_driver_sql(
        "SELECT c.relname, i.inhdetachpending FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        f" WHERE i.inhparent = '{table}'::regclass ORDER BY c.relname"
    )
    for name, pending in cast(list[tuple[str, bool]], rows.all()):
        if pending:
            found.detaching.append(name)
            continue
        match = _NAME.match(name)
        if match is None or match["table"] != table:
            continue  # not one of ours: left alone
        day = date(int(match["day"][:4]), int(match["day"][4:6]), int(match["day"][6:]))
        if match["kind"] == "p":
            found.days.append(day)
        elif match["kind"] == "past_":
            found.past = (name, day)
        else:
            found.future = (name, day)
    found.days.sort()
    return found


async def _detached(connection: AsyncConnection, table: str) -> list[str]:
    """Tables named as this table's partitions that are no partition any more: detached by a
    pass that died before dropping them."""
    rows = await connection.exec_driver_sql(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition"
        f" AND relnamespace = 'public'::regnamespace AND relname ~ '^{table}_(p|past_|future_)'"
    )
    return [
        name
        for (name,) in rows
        if (match := _NAME.match(name)) is not None and match["table"] == table
    ]


async def _new_table(connection: AsyncConnection, table: str, name: str) -> None:
    # Plain table first, ATTACHed after: CREATE TABLE ... PARTITION OF takes an ACCESS
    # EXCLUSIVE lock on the parent, ATTACH only SHARE UPDATE EXCLUSIVE. The parent's indexes
    # are built on it by the ATTACH (empty: nothing to build).
    await connection.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {name} (LIKE {table} INCLUDING DEFAULTS)"
    )


async def _attach(connection: AsyncConnection, table: str, name: str, values: str) -> None:
    await connection.exec_driver_sql(f"ALTER TABLE {table} ATTACH PARTITION {name} {values}")


async def _detach(connection: AsyncConnection, table: str, name: str) -> None:
    await connection.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {name} CONCURRENTLY")


async def reconcile(
    connection: AsyncConnection, table: str, *, keep_from: date | None, ahead_until: date
) -> Upkeep:
    """Give `table` a partition for every day up to `ahead_until`, and drop those of the days
    before `keep_from` (None: none). `connection` is in autocommit."""
    done = Upkeep()
    state = await layout(connection, table)
    for name in state.detaching:
        await connection.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {name} FINALIZE")
    for name in await _detached(connection, table):
        if name.startswith(f"{table}_future_"):
            done.moved += await _move_back(connection, table, name)
        await connection.exec_driver_sql(f"DROP TABLE {name}")
    state = await layout(connection, table)
    if not state.days:
        raise RuntimeError(f"{table} has no day partition: is the database migrated?")
    await _create_ahead(connection, table, state, ahead_until, done)
    await _drop_expired(connection, table, state, keep_from, done)
    return done


async def _create_ahead(
    connection: AsyncConnection, table: str, state: Layout, until: date, done: Upkeep
) -> None:
    last = state.days[-1]
    new_days = [last + timedelta(days=n) for n in range(1, (until - last).days + 1)]
    if not new_days and state.future is not None:
        return
    bound = (new_days[-1] if new_days else last) + timedelta(days=1)
    future = future_name(table, bound)
    for day in new_days:
        await _new_table(connection, table, day_name(table, day))
    await _new_table(connection, table, future)
    # Only now is `future` cut short: days ahead are rarely written to, and never by this
    # process's clock (the SDK's times are at most now, the Trigger Events API refuses future
    # ones), so a row that finds no partition until the ATTACH below is all but impossible.
    if state.future is not None:
        await _detach(connection, table, state.future[0])
    for day in new_days:
        values = f"FOR VALUES FROM ({_bound(day)}) TO ({_bound(day + timedelta(days=1))})"
        await _attach(connection, table, day_name(table, day), values)
    await _attach(connection, table, future, f"FOR VALUES FROM ({_bound(bound)}) TO (MAXVALUE)")
    if state.future is not None:
        done.moved += await _move_back(connection, table, state.future[0])
        await connection.exec_driver_sql(f"DROP TABLE {state.future[0]}")
    state.days += new_days
    state.future = (future, bound)
    done.created += new_days


async def _move_back(connection: AsyncConnection, table: str, detached: str) -> int:
    """Rows of a detached `future` go back through the parent, into the days now created."""
    result = await connection.exec_driver_sql(
        f"WITH moved AS (DELETE FROM {detached} RETURNING *)"
        f" INSERT INTO {table} SELECT * FROM moved"
    )
    moved: int = result.rowcount
    if moved:
        log.warning("%s: %d rows written ahead of the days created moved into them", table, moved)
    return moved


async def _drop_expired(
    connection: AsyncConnection, table: str, state: Layout, keep_from: date | None, done: Upkeep
) -> None:
    expired = [day for day in state.days if keep_from is not None and day < keep_from]
    kept = [day for day in state.days if day not in expired]
    first = kept[0]
    if not expired and state.past is not None and state.past[1] == first:
        return
    past = past_name(table, first)
    await _new_table(connection, table, past)
    detached = [day_name(table, day) for day in expired]
    if state.past is not None:
        detached.insert(0, state.past[0])
    started = time.perf_counter()
    for name in detached:
        await _detach(connection, table, name)
    await _attach(connection, table, past, f"FOR VALUES FROM (MINVALUE) TO ({_bound(first)})")
    attached = time.perf_counter()
    for name in detached:
        await connection.exec_driver_sql(f"DROP TABLE {name}")
    done.detaching = attached - started
    done.dropping = time.perf_counter() - attached
    state.days = kept
    state.past = (past, first)
    done.dropped += expired


async def keep_partitions(
    engine: AsyncEngine, bounds: dict[str, tuple[date | None, date]]
) -> dict[str, Upkeep] | None:
    """`reconcile` each table of `bounds` ({table: (keep_from, ahead_until)}) under the
    advisory lock; None when another process holds it (it is doing the same)."""
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        locked = await connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({_LOCK_KEY})")
        if not locked.scalar():
            return None
        try:
            return {
                table: await reconcile(connection, table, keep_from=first, ahead_until=until)
                for table, (first, until) in bounds.items()
            }
        finally:
            await connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK_KEY})")
