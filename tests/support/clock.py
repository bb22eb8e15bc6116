"""A clock that moves only when the test moves it (clarion.clock.Clock)."""

from __future__ import annotations

from datetime import datetime, timedelta


class Clock:
    """Wall time `now`, and monotonic seconds that start at `monotonic` (0 by default: a
    machine just booted, where a cache that took 0 for "never read" would go wrong).

    Setting `now` moves monotonic time by as much, forward only: a wall clock set back (an NTP
    correction) leaves monotonic time where it was, as on a real machine."""

    def __init__(self, now: datetime, *, monotonic: float = 0.0) -> None:
        self._now = now
        self._seconds = monotonic

    @property
    def now(self) -> datetime:
        return self._now

    @now.setter
    def now(self, value: datetime) -> None:
        self._seconds += max(0.0, (value - self._now).total_seconds())
        self._now = value

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def __call__(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._seconds
