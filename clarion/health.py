"""Heartbeats of a process's background loops, which `/readyz` reads (clarion.probes).

Every loop the runtime repeats (`Runtime._repeat`: outbox sweep, campaign scheduler, automation
dispatcher, imports, exports, statistics, GDPR, ...) beats once per pass, and the code of a long
pass beats as it makes progress (an export renewing its lease, an import reading its file, a
dispatcher going on with a full page): a loop is stale when it has not beaten for `bound(every)`.
Code calls `beat()` without naming its loop: the loop's task carries its registration in a
context variable, which the tasks it starts inherit, and outside a loop (a test or a command
calling the same runner) `beat()` does nothing.

The times are the monotonic readings of an injected `Clock` (decision 0035), so that a test
makes a loop stale by moving its clock, not by waiting.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass

from clarion.clock import SYSTEM_CLOCK, Clock

# A loop is stale after three of its intervals, and never sooner than a minute past one: a
# probe every 5-10 s that pulls the process after 2-3 failures then acts on a loop that missed
# three passes, not on one pass slowed by a busy database (a PostgreSQL failover takes ~30 s,
# which the database check reports for what it is). A pass that runs longer than that without
# beating (a blocking call with no timeout) is what this is meant to see.
MISSED_PASSES = 3
GRACE_SECONDS = 60.0


def bound(every: float) -> float:
    """Seconds without a beat after which a loop repeated every `every` seconds is stale."""
    return max(MISSED_PASSES * every, every + GRACE_SECONDS)


@dataclass
class _Loop:
    every: float
    last: float  # monotonic


class Heartbeats:
    """The loops of one runtime, by name, and the tasks that must run for its whole life."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._loops: dict[str, _Loop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def beat(self, name: str, every: float) -> None:
        """`name`, repeated every `every` seconds, is alive now (also registers it)."""
        self._loops[name] = _Loop(every, self.clock.monotonic())

    def enter(self, name: str, every: float) -> None:
        """The current task runs loop `name`: `beat()` from it or from the tasks it starts
        beats for that loop. Call it first thing in the loop's own task (whose context is its
        own copy), never in a caller's."""
        self.beat(name, every)
        _current.set((self, name, every))

    def watch(self, name: str, task: asyncio.Task[None]) -> None:
        """A task that runs for the life of the process (the queue's worker, which waits for
        jobs inside pgqueuer with no pass of its own to beat from): stale once it has ended."""
        self._tasks[name] = task

    def stale(self, now: float) -> list[str]:
        """The loops that have not beaten within their bound at monotonic time `now`, and the
        watched tasks that ended, by name."""
        late = [name for name, loop in self._loops.items() if now - loop.last > bound(loop.every)]
        ended = [name for name, task in self._tasks.items() if task.done()]
        return sorted(late + ended)


_current: ContextVar[tuple[Heartbeats, str, float] | None] = ContextVar(
    "clarion_health_loop", default=None
)


def beat() -> None:
    """The loop this code runs in is alive (its pass is making progress)."""
    current = _current.get()
    if current is not None:
        heartbeats, name, every = current
        heartbeats.beat(name, every)
