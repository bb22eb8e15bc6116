"""When a campaign's occurrences are due: pure functions of its body and the clock.

Occurrences are numbered from 0. A one-time campaign has occurrence 0 only; a recurring one
has one per period from its first push time, until its end date or occurrence count. A
local-time occurrence is "due" when its first time zone (UTC+14) reaches it and lasts until the
last one (UTC-12) has.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dateutil.relativedelta import relativedelta

from clarion.campaigns.schemas import CampaignBody, RepeatUnit
from clarion.formats import parse_wire_date

# Zones run from UTC-12 to UTC+14: a local-time occurrence starts 14 h before its wall-clock
# time in UTC and has reached every zone 12 h after it.
EARLIEST_UTC_OFFSET = timedelta(hours=14)
LATEST_UTC_OFFSET = timedelta(hours=12)


def occurrence_time(body: CampaignBody, index: int, *, now: datetime) -> datetime | None:
    """When occurrence `index` is due, in UTC; None when there is no such occurrence."""
    if body.push_time == "now":
        return now if index == 0 else None
    if body.push_time is not None:
        first = parse_wire_date(body.push_time).replace(tzinfo=UTC)
    else:
        assert body.local_push_time is not None
        first = parse_wire_date(body.local_push_time).replace(tzinfo=UTC) - EARLIEST_UTC_OFFSET
    recurrence = body.recurrence
    if recurrence is None:
        return first if index == 0 else None
    if recurrence.occurrences is not None and index >= recurrence.occurrences:
        return None
    step = recurrence.repeat_frequency * index
    # Always from the first time, never from the previous one: monthly on the 31st stays on
    # the last day of shorter months instead of drifting to the 28th for good.
    delta = {
        RepeatUnit.DAILY: relativedelta(days=step),
        RepeatUnit.WEEKLY: relativedelta(weeks=step),
        RepeatUnit.MONTHLY: relativedelta(months=step),
    }[recurrence.repeat_unit]
    due = first + delta
    if recurrence.end_date is not None:
        end = parse_wire_date(recurrence.end_date).replace(tzinfo=UTC)
        if body.local_push_time is not None:
            end -= EARLIEST_UTC_OFFSET
        if due > end:
            return None
    return due


def occurrence_end(body: CampaignBody, due: datetime) -> datetime:
    """When an occurrence due at `due` has reached every installation's time."""
    if body.local_push_time is not None:
        return due + EARLIEST_UTC_OFFSET + LATEST_UTC_OFFSET
    return due


def next_to_run(body: CampaignBody, start: int, *, now: datetime) -> tuple[int, datetime] | None:
    """The occurrence to schedule from `start` on: the first one still ahead, or the latest one
    already due. Occurrences missed while Clarion was down are not sent one after the other
    when it is back: only the latest is (and its time to live decides whether it still goes)."""
    due = occurrence_time(body, start, now=now)
    if due is None:
        return None
    index = start
    while (following := occurrence_time(body, index + 1, now=now)) is not None and following <= now:
        index, due = index + 1, following
    return index, due


def first_ahead(body: CampaignBody, start: int, *, now: datetime) -> tuple[int, datetime] | None:
    """The first occurrence from `start` on that is not in the past (resuming a campaign sends
    nothing for the occurrences it was paused over)."""
    index = start
    while (due := occurrence_time(body, index, now=now)) is not None:
        if due >= now:
            return index, due
        index += 1
    return None
