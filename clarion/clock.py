"""The time as Clarion's background work reads it, injected so that tests move it
(docs/decisions/0035-one-injected-clock.md).

A `Clock` is called for the wall time (aware, UTC: what is stored and compared with stored
times) and asked `monotonic()` for seconds that only go forward (what durations, deadlines and
caches measure: the wall clock may jump when NTP corrects it). One object carries both so that a
test moves them together, and can start monotonic time at 0, as on a machine just booted.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> datetime:
        """Now, aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds since an arbitrary start (the machine's boot for the system clock)."""
        ...


class SystemClock:
    """The machine's clocks: what every process uses."""

    __slots__ = ()

    def __call__(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()
