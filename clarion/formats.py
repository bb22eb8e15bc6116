"""Value formats shared by Batch's APIs: names, and the dates of the data and campaign APIs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

# Attribute, collection and event-attribute names, as Batch's SDKs and APIs accept them.
NAME = re.compile(r"[a-z0-9_]{1,30}")
_WIRE_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?")


def parse_batch_date(value: Any) -> datetime:
    """A `date(...)` value: Unix time in seconds, or `YYYY-MM-DDTHH:MM:SS[.SSS]` read as UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and _DATE_TEXT.fullmatch(value):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    raise ValueError("a Unix time in seconds or YYYY-MM-DDTHH:MM:SS[.SSS] (UTC)")


def parse_wire_date(value: str) -> datetime:
    """A `yyyy-MM-ddTHH:mm:ss` date (Campaigns API) as a naive datetime: UTC for push_time,
    a wall-clock time for local_push_time; the caller applies the zone."""
    return datetime.strptime(value, _WIRE_DATE_FORMAT)  # noqa: DTZ007


def wire_date(value: datetime) -> str:
    """A datetime as `yyyy-MM-ddTHH:mm:ss` in UTC (created_date, created, updated)."""
    return value.astimezone(UTC).strftime(_WIRE_DATE_FORMAT)
