"""An automation's clock arithmetic with fixed instants: the next HH:MM in the user's zone, and
the end of quiet hours, across zones, midnight and changes of offset (DST)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from clarion.automations.timing import next_local_time, quiet_until

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
KATHMANDU = ZoneInfo("Asia/Kathmandu")  # UTC+05:45


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("after", "at", "zone", "expected"),
    [
        # 10:00 UTC is 12:00 in Paris (summer): 18:30 the same day, 16:30 UTC.
        (utc(2026, 7, 1, 10, 0), "18:30", PARIS, utc(2026, 7, 1, 16, 30)),
        # 12:00 in Paris, 09:00 is past: the next day.
        (utc(2026, 7, 1, 10, 0), "09:00", PARIS, utc(2026, 7, 2, 7, 0)),
        # Exactly the time: at or after, so now.
        (utc(2026, 7, 1, 16, 30), "18:30", PARIS, utc(2026, 7, 1, 16, 30)),
        # A second past it: tomorrow.
        (utc(2026, 7, 1, 16, 30, 1), "18:30", PARIS, utc(2026, 7, 2, 16, 30)),
        # 02:00 UTC is 22:00 the day before in New York (EDT): 09:00 is its next morning.
        (utc(2026, 7, 2, 2, 0), "09:00", NEW_YORK, utc(2026, 7, 2, 13, 0)),
        # 20:00 UTC is 05:00 the next day in Tokyo: 09:00 there, 00:00 UTC.
        (utc(2026, 7, 1, 20, 0), "09:00", TOKYO, utc(2026, 7, 2, 0, 0)),
        # Quarter-hour offsets.
        (utc(2026, 7, 1, 0, 0), "09:00", KATHMANDU, utc(2026, 7, 1, 3, 15)),
        # Across the spring change in Paris (29 March 2026, 02:00 -> 03:00): the day before at
        # 10:00 CET, 09:00 is past; the next 09:00 is CEST (UTC+2), 07:00 UTC, 22 h later.
        (utc(2026, 3, 28, 9, 0), "09:00", PARIS, utc(2026, 3, 29, 7, 0)),
        # 02:30 does not exist that night: read with the offset before the jump (03:30 CEST).
        (utc(2026, 3, 29, 0, 10), "02:30", PARIS, utc(2026, 3, 29, 1, 30)),
        # Across the autumn change (25 October 2026, 03:00 -> 02:00): 26 h between two 09:00s
        # would be wrong; 09:00 CET is 08:00 UTC.
        (utc(2026, 10, 24, 8, 0), "09:00", PARIS, utc(2026, 10, 25, 8, 0)),
        # 02:30 happens twice: its first occurrence (CEST, 00:30 UTC) when both are ahead ...
        (utc(2026, 10, 25, 0, 0), "02:30", PARIS, utc(2026, 10, 25, 0, 30)),
        # ... its second (CET, 01:30 UTC) when the first has passed and the wall clock is back
        # before 02:30 (02:10 CET).
        (utc(2026, 10, 25, 1, 10), "02:30", PARIS, utc(2026, 10, 25, 1, 30)),
        # New York's spring change (8 March 2026): 09:00 EDT is 13:00 UTC, 14:00 the day before.
        (utc(2026, 3, 7, 15, 0), "09:00", NEW_YORK, utc(2026, 3, 8, 13, 0)),
    ],
)
def test_next_local_time(after: datetime, at: str, zone: ZoneInfo, expected: datetime) -> None:
    assert next_local_time(after, at, zone) == expected


@pytest.mark.parametrize(
    ("at", "start", "end", "zone", "expected"),
    [
        # A daytime window, in it: its end the same day (14:00 Paris summer = 12:00 UTC).
        (utc(2026, 7, 1, 11, 0), "12:00", "14:00", PARIS, utc(2026, 7, 1, 12, 0)),
        # Before it, and at its end (exclusive): not quiet.
        (utc(2026, 7, 1, 9, 59), "12:00", "14:00", PARIS, None),
        (utc(2026, 7, 1, 12, 0), "12:00", "14:00", PARIS, None),
        # At its start (inclusive): quiet.
        (utc(2026, 7, 1, 10, 0), "12:00", "14:00", PARIS, utc(2026, 7, 1, 12, 0)),
        # Spanning midnight, before midnight (23:00 Tokyo = 14:00 UTC): ends 08:00 Tokyo the
        # next day, 23:00 UTC.
        (utc(2026, 7, 1, 14, 0), "22:00", "08:00", TOKYO, utc(2026, 7, 1, 23, 0)),
        # Spanning midnight, after midnight (03:00 Tokyo on the 2nd = 18:00 UTC on the 1st):
        # ends 08:00 the same local day.
        (utc(2026, 7, 1, 18, 0), "22:00", "08:00", TOKYO, utc(2026, 7, 1, 23, 0)),
        # Spanning midnight, outside it (12:00 Tokyo).
        (utc(2026, 7, 1, 3, 0), "22:00", "08:00", TOKYO, None),
        # The same instant is quiet in New York (23:00 EDT) and not in Paris (05:00 CEST).
        (utc(2026, 7, 2, 3, 0), "22:00", "05:00", NEW_YORK, utc(2026, 7, 2, 9, 0)),
        (utc(2026, 7, 2, 3, 0), "22:00", "05:00", PARIS, None),
        # A night across the spring change in Paris: from 23:00 CET (22:00 UTC) to 08:00 CEST
        # (06:00 UTC): 9 h of wall clock, 8 h of time (an hour is skipped).
        (utc(2026, 3, 28, 22, 0), "23:00", "08:00", PARIS, utc(2026, 3, 29, 6, 0)),
        # Across the autumn change: from 23:00 CEST (21:00 UTC) to 08:00 CET (07:00 UTC), 10 h.
        (utc(2026, 10, 24, 21, 0), "23:00", "08:00", PARIS, utc(2026, 10, 25, 7, 0)),
        # A window ending at 02:30 on the autumn night, reached in the repeated hour's second
        # pass (02:10 CET, 01:10 UTC): it ends at the second 02:30 (01:30 UTC), still ahead.
        (utc(2026, 10, 25, 1, 10), "01:00", "02:30", PARIS, utc(2026, 10, 25, 1, 30)),
    ],
)
def test_quiet_until(
    at: datetime, start: str, end: str, zone: ZoneInfo, expected: datetime | None
) -> None:
    assert quiet_until(at, start, end, zone) == expected
