"""Waiting for a state instead of sleeping: a check polled until it holds, within a deadline.

A sleep lets a test pass without the state it names ever happening (an outage that ended
before the first attempt, a lock nobody contended); these fail, saying what never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg

from clarion.queue import libpq_url

WAIT_SECONDS = 20.0


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    what: str,
    timeout: float = WAIT_SECONDS,
    every: float = 0.02,
) -> None:
    """Until `check()` answers true; fails after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(every)


def until(
    check: Callable[[], bool], *, what: str, timeout: float = WAIT_SECONDS, every: float = 0.05
) -> None:
    """`eventually` for code outside the event loop (threads, subprocess tests)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


async def lock_waited(database_url: str, *, statement: str = "", what: str) -> None:
    """Until a session of this PostgreSQL database waits for a lock (pg_stat_activity), one
    running `statement…` if given: the proof that a test's transaction is contended, which a
    pause only hopes for."""
    # Autocommit: a transaction would read pg_stat_activity once and see it frozen.
    async with await psycopg.AsyncConnection.connect(
        libpq_url(database_url), autocommit=True
    ) as watcher:

        async def waiting() -> bool:
            cursor = await watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE %s",
                (f"{statement}%",),
            )
            row = await cursor.fetchone()
            return row is not None and row[0] > 0

        await eventually(waiting, what=what)
