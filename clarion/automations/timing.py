"""An automation's clock arithmetic in the user's time zone: the next HH:MM at or after an
instant (the trigger's `at_local_time`), and the end of the quiet hours an instant falls in.

Wall-clock times are read as the local-time campaigns read them (clarion.campaigns.fanout):
a time the zone skips (02:30 on the night clocks go forward) is read with the offset before
the change, so it falls 30 min after the jump (03:30); a time the zone repeats (clocks going
back) is its first occurrence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


def clock_time(text: str) -> time:
    """ "HH:MM" (the schemas' pattern) as a time."""
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _instant(day: date, at: time, zone: ZoneInfo, *, fold: int = 0) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).replace(fold=fold).astimezone(UTC)


def next_local_time(after: datetime, at: str, zone: ZoneInfo) -> datetime:
    """The first instant at or after `after` (aware) whose wall clock in `zone` reads `at`
    ("HH:MM"), in UTC. Compared on the wall clock: a day whose `at` is already past goes to
    the next day, whatever the day's length (23 or 25 h across a change of offset)."""
    wall = after.astimezone(zone)
    target = clock_time(at)
    day = wall.date()
    if wall.replace(tzinfo=None) > datetime.combine(day, target):
        day += timedelta(days=1)
    found = _instant(day, target, zone)
    # The repeated hour: `after` in its second occurrence, `at` in its first.
    return found if found >= after else max(_instant(day, target, zone, fold=1), after)


def quiet_until(at: datetime, start: str, end: str, zone: ZoneInfo) -> datetime | None:
    """If `at` (aware) falls within the daily quiet hours [start, end) of the wall clock in
    `zone`, the instant they end (UTC); else None. A window may span midnight (22:00 to
    08:00): from its start to the end on the next day."""
    wall = at.astimezone(zone)
    now = wall.time().replace(tzinfo=None)
    begins, ends = clock_time(start), clock_time(end)
    day = wall.date()
    if begins < ends:
        inside = begins <= now < ends
    else:  # spans midnight
        inside = now >= begins or now < ends
        if now >= begins:
            day += timedelta(days=1)
    if not inside:
        return None
    for fold in (0, 1):
        # The window's end read in the repeated hour: its second occurrence may be the one
        # still ahead of `at`.
        found = _instant(day, ends, zone, fold=fold)
        if found > at:
            return found
    return None
