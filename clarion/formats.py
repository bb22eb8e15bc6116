"""Value formats shared by Batch's data APIs (Trigger Events, Custom Data): names and dates."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

# Attribute, collection and event-attribute names, as Batch's SDKs and APIs accept them.
NAME = re.compile(r"[a-z0-9_]{1,30}")
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?")


def parse_batch_date(value: Any) -> datetime:
    """A `date(...)` value: Unix time in seconds, or `YYYY-MM-DDTHH:MM:SS[.SSS]` read as UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and _DATE_TEXT.fullmatch(value):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    raise ValueError("a Unix time in seconds or YYYY-MM-DDTHH:MM:SS[.SSS] (UTC)")
