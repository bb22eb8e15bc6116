"""Group commit for coroutines: the calls made in one turn of the event loop share one flush.

Under load, a server's event loop resumes many requests per turn. Each appends its item and
waits; the first schedules a flush that runs on the next turn with every item appended so far,
so a burst pays a transaction or a queue write once instead of once per request. A call alone
waits one turn. If the flush raises, every call of its group raises it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TurnBatcher(Generic[T]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[None]]) -> None:
        self._flush = flush
        self._pending: list[T] = []
        self._flushing: asyncio.Future[None] | None = None

    async def submit(self, *items: T) -> None:
        """Returns once the flush that took these items has finished."""
        self._pending.extend(items)
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._run())
        # Shielded: a caller that goes away (client disconnected) does not cancel the others.
        await asyncio.shield(self._flushing)

    async def _run(self) -> None:
        await asyncio.sleep(0)  # one turn: the calls being served right now join this group
        items, self._pending, self._flushing = self._pending, [], None
        await self._flush(items)
