"""Waiting for a state instead of sleeping: a check polled until it holds, within a deadline.

A sleep lets a test pass without the state it names ever happening (an outage that ended
before the first attempt, a lock nobody contended); these fail, saying what never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

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
