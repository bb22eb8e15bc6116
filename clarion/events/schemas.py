"""Trigger Events API 1.0 (spec §9): server-side events on custom user ids, Batch's wire format."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from clarion.formats import NAME, Id, WireModel, parse_batch_date

MAX_EVENTS_PER_CALL = 1000
MAX_ATTRIBUTES = 15
# Batch refuses times in the future; a minute of tolerance absorbs the sender's clock skew.
FUTURE_TOLERANCE = timedelta(minutes=1)
MAX_AGE = timedelta(hours=24)

_DATE_ATTRIBUTE = re.compile(r"date\(([a-z0-9_]{1,30})\)")


class ServerEventIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^ue\.[a-z0-9_]{1,30}$")
    time: datetime | None = None
    label: Annotated[Id, Field(max_length=200)] | None = None
    attributes: dict[str, Any] | None = None
    tags: list[Id] | None = Field(default=None, max_length=10)

    @field_validator("time")
    @classmethod
    def _within_the_last_day(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        at = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        now = datetime.now(UTC)
        if at > now + FUTURE_TOLERANCE:
            raise ValueError("must not be in the future")
        if at < now - MAX_AGE:
            raise ValueError("must be at most 24 hours in the past")
        return at

    @field_validator("tags")
    @classmethod
    def _short_tags(cls, tags: list[str] | None) -> list[str] | None:
        if tags is not None and any(not 1 <= len(tag) <= 64 for tag in tags):
            raise ValueError("each tag has 1 to 64 characters")
        return tags

    @field_validator("attributes")
    @classmethod
    def _batch_attributes(cls, attributes: dict[str, Any] | None) -> dict[str, Any] | None:
        """Batch's rules; `date(name)` values are normalised to ISO 8601 UTC strings."""
        if attributes is None:
            return None
        if len(attributes) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes")
        normalised: dict[str, Any] = {}
        for name, value in attributes.items():
            if _DATE_ATTRIBUTE.fullmatch(name):
                normalised[name] = _date_value(name, value)
            elif not NAME.fullmatch(name):
                raise ValueError(f"attribute name {name!r}: use a-z, 0-9 and _, at most 30")
            elif isinstance(value, str):
                if len(value) > 64:
                    raise ValueError(f"attribute {name!r}: strings have at most 64 characters")
                normalised[name] = value
            elif isinstance(value, bool | int | float):
                normalised[name] = value
            else:
                raise ValueError(f"attribute {name!r}: a string, number or boolean")
        return normalised


def _date_value(name: str, value: Any) -> str:
    try:
        return parse_batch_date(value).isoformat()
    except ValueError as exc:
        raise ValueError(f"attribute {name!r}: {exc}") from None


class UserEventsIn(WireModel):
    """The body for one user: `POST 1.0/{key}/events/users/{custom_id}`."""

    model_config = ConfigDict(extra="forbid")

    events: list[ServerEventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_CALL)


class UserEventsItem(UserEventsIn):
    id: Annotated[Id, Field(min_length=1, max_length=512)]


class UserEventsBulkIn(RootModel[list[UserEventsItem]]):
    """The bulk body: `[{"id": "<custom id>", "events": [...]}, ...]`."""

    root: list[UserEventsItem] = Field(min_length=1)

    @model_validator(mode="after")
    def _at_most_1000_events(self) -> UserEventsBulkIn:
        if sum(len(item.events) for item in self.root) > MAX_EVENTS_PER_CALL:
            raise ValueError(f"at most {MAX_EVENTS_PER_CALL} events per call, across users")
        return self


class EventsAccepted(BaseModel):
    token: str
