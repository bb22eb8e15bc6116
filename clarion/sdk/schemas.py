"""Wire format of the SDK API (what apps and web pages send). Reference: docs/sdk-api.md."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property
from typing import Annotated, Any
from zoneinfo import available_timezones

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from clarion.custom_data.models import AttributeKind
from clarion.custom_data.schemas import DeleteAttribute, Operation, SetAttribute, parse_value
from clarion.events.models import InAppEventKind
from clarion.formats import (
    FIRST_DATE,
    HTTPS_URL,
    INT64_MAX,
    INT64_MIN,
    LAST_DATE,
    NAME,
    Id,
    WireModel,
)

_TIMEZONES = frozenset(available_timezones())

# At most 16 characters, what an installation keeps (sdk/models.py): a longer well-formed tag
# failed PostgreSQL's column check as a 500.
Language = Annotated[str, Field(max_length=16, pattern=r"^[a-zA-Z]{2,3}([-_][A-Za-z0-9]{2,8})*$")]
# Stored upper-case: targeting compares regions as they are, which keeps indexes and the
# planner's statistics usable.
Region = Annotated[str, Field(pattern=r"^[A-Za-z]{2}$|^[0-9]{3}$"), AfterValidator(str.upper)]


class WebPushKeys(WireModel):
    p256dh: str = Field(min_length=16, max_length=200)
    auth: str = Field(min_length=8, max_length=100)


class WebPushSubscription(WireModel):
    """The browser's PushSubscription.toJSON()."""

    endpoint: str = Field(pattern=HTTPS_URL, max_length=1024)
    keys: WebPushKeys


class InstallationUpsert(WireModel):
    """Every field is optional: an omitted field is left as it is, `null` clears it."""

    model_config = ConfigDict(extra="forbid")

    push_token: str | None = Field(default=None, min_length=8, max_length=1024)
    webpush_subscription: WebPushSubscription | None = None
    custom_id: Annotated[Id, Field(min_length=1, max_length=512)] | None = None
    advertising_id: Annotated[Id, Field(min_length=1, max_length=64)] | None = None
    language: Language | None = None
    region: Region | None = None
    timezone: str | None = Field(default=None, max_length=64)
    app_version: str | None = Field(default=None, max_length=64)
    os_version: str | None = Field(default=None, max_length=64)
    device_model: str | None = Field(default=None, max_length=128)
    push_optin: bool | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None and value not in _TIMEZONES:
            raise ValueError("not an IANA time zone name")
        return value


class InstallationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    install_id: str
    push_token: str | None
    custom_id: str | None
    advertising_id: str | None
    language: str | None
    region: str | None
    timezone: str | None
    app_version: str | None
    os_version: str | None
    device_model: str | None
    push_optin: bool
    created_at: datetime
    last_seen_at: datetime


class CustomIdSet(WireModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: Annotated[Id, Field(min_length=1, max_length=512)]


_EVENT_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_]{0,29}"
_LABEL_MAX, _TAG_MAX, _TAGS_MAX, _EVENTS_MAX = 200, 64, 25, 100


class TrackedEventIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    # A leading "_" is Clarion's own (app opens are tracked as "_open").
    name: str = Field(pattern=f"^{_EVENT_NAME}$")
    label: Annotated[Id, Field(max_length=_LABEL_MAX)] | None = None
    attributes: dict[str, Any] | None = None
    tags: list[Annotated[Id, Field(min_length=1, max_length=_TAG_MAX)]] | None = Field(
        default=None, max_length=_TAGS_MAX
    )
    occurred_at: datetime | None = None


class TrackedEventsIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    events: list[TrackedEventIn] = Field(min_length=1, max_length=_EVENTS_MAX)

    def as_tuples(self) -> list[SdkEvent]:
        return [(e.name, e.label, e.attributes, e.tags, e.occurred_at) for e in self.events]


SdkEvent = tuple[str, str | None, dict[str, Any] | None, list[str] | None, datetime | None]
"""A tracked event as validated: name (as sent), label, attributes, tags, occurred_at."""

_EVENT_NAME_RE = re.compile(_EVENT_NAME)
_EVENT_FIELDS = frozenset(TrackedEventIn.model_fields)
# What `new Date().toISOString()` writes (the Web SDK's occurred_at), and the same without the
# fraction or with 1-6 digits of it; [0-9], not \d, which matches any Unicode digit.
_SDK_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?Z"
)
# orjson reads an integer beyond 64 bits as a float, which TrackedEventsIn refuses (as an int).
_FLOAT_OF_BIG_INT = 2.0**63
# pydantic's JSON parser refuses nesting deeper than ~200; attributes that deep go to it.
_MAX_DEPTH = 16


def read_plain_events(body: bytes) -> list[SdkEvent] | None:
    """TrackedEventsIn's events read from a plain body, in ~1/4 of the time pydantic takes, or
    None: the body is then left to `TrackedEventsIn.model_validate_json`, which accepts it or
    names what is wrong. It returns events only for bodies that TrackedEventsIn accepts, and
    the same values (tests/test_sdk_api.py checks both on the same bodies).

    Plain: valid JSON (orjson) without a backslash or U+FFFE/U+FFFF in it. Valid JSON has no
    raw control character in a string and valid UTF-8 no lone surrogate, so with no escape
    sequence every string and object key follows WireModel's text rule without a search.
    Then the fields are checked as TrackedEventIn declares them, and anything pydantic would
    convert (a number as a label, `[]` as absent attributes, a date in another form) or
    refuse is left to it. The pydantic model, with WireModel's validators on every field, cost
    ~17% of the SDK API's CPU per 10-event call (py-spy, bench/sdk_events.py)."""
    if b"\\" in body or b"\xef\xbf\xbe" in body or b"\xef\xbf\xbf" in body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or len(data) != 1:
        return None
    found = data.get("events")
    if type(found) is not list or not 1 <= len(found) <= _EVENTS_MAX:
        return None
    events: list[SdkEvent] = []
    for event in found:
        if type(event) is not dict or not _EVENT_FIELDS.issuperset(event):
            return None
        name = event.get("name")
        if type(name) is not str or _EVENT_NAME_RE.fullmatch(name) is None:
            return None
        label = event.get("label")
        if label is not None and (type(label) is not str or len(label) > _LABEL_MAX):
            return None
        attributes = event.get("attributes")
        if attributes is not None and (type(attributes) is not dict or not _plain(attributes, 1)):
            return None
        tags = event.get("tags")
        if tags is not None and (
            type(tags) is not list
            or len(tags) > _TAGS_MAX
            or not all(type(tag) is str and 1 <= len(tag) <= _TAG_MAX for tag in tags)
        ):
            return None
        occurred_at = event.get("occurred_at")
        if occurred_at is not None:
            occurred_at = _sdk_date(occurred_at)
            if occurred_at is None:
                return None
        events.append((name, label, attributes, tags, occurred_at))
    return events


def _plain(value: dict[str, Any] | list[Any], depth: int) -> bool:
    """Whether the numbers in `value` are those WireModel keeps: integers within 64 bits,
    floats that are not an integer beyond them (orjson gives no NaN or infinity)."""
    if depth > _MAX_DEPTH:
        return False
    items: Iterable[Any] = value.values() if type(value) is dict else value
    for item in items:
        kind = type(item)
        if kind is int:
            if not INT64_MIN <= item <= INT64_MAX:
                return False
        elif kind is float:
            if not -_FLOAT_OF_BIG_INT < item < _FLOAT_OF_BIG_INT:
                return False
        elif (kind is dict or kind is list) and not _plain(item, depth + 1):
            return False
    return True


def _sdk_date(value: Any) -> datetime | None:
    if type(value) is not str or _SDK_DATE.fullmatch(value) is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:  # a day the month does not have
        return None
    return at if FIRST_DATE <= at <= LAST_DATE else None  # in UTC: WireModel's date_problem


class AppOpenIn(WireModel):
    """Sent when the app comes to the foreground (influenced opens, last visit)."""

    model_config = ConfigDict(extra="forbid")

    occurred_at: datetime | None = None


class PushOpenIn(WireModel):
    """Sent when the user opens a notification; `send_id` is `com.batch.i` from the payload."""

    model_config = ConfigDict(extra="forbid")

    send_id: str = Field(min_length=1, max_length=64)
    occurred_at: datetime | None = None


class InAppEventIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    kind: InAppEventKind
    campaign_id: str = Field(min_length=1, max_length=64)

    @field_validator("kind")
    @classmethod
    def _reported_by_the_sdk(cls, value: InAppEventKind) -> InAppEventKind:
        # The server counts what it hands out (once per installation and campaign); an SDK
        # reporting it would count it again, as often as it liked.
        if value is InAppEventKind.SUPPLIED:
            raise ValueError(
                "inapp_supplied is counted by the server; report shown, clicked or closed"
            )
        return value

    cta_position: int | None = Field(default=None, ge=0, le=100)
    cta_label: str | None = Field(default=None, max_length=255)
    # The A/B version the installation was handed (SdkMessage.version); absent without A/B.
    version: str | None = Field(default=None, pattern=r"^[a-z]$")
    occurred_at: datetime | None = None


class InAppEventsIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    events: list[InAppEventIn] = Field(min_length=1, max_length=100)


class Accepted(BaseModel):
    accepted: int


class VapidKey(BaseModel):
    application_server_key: str


# Profile edits (the Web SDK's profile().edit) ---------------------------------------------------

# Entries per call in `attributes` and in `tags`: a page's edit sets a handful, and the cap bounds
# what one call writes (100 attributes and 100 collections of 25 tags: 2,600 rows at most).
MAX_PROFILE_EDITS = 100
# The Custom Data API's key of an attribute of each kind: the date and URL kinds are spelled in
# the key there, as `date(u.name)` and `url(u.name)`.
_DATA_KEY = {AttributeKind.DATE: "date(u.{})", AttributeKind.URL: "url(u.{})"}
_EXPECTED = {
    AttributeKind.STRING: "a string",
    AttributeKind.INTEGER: "an integer",
    AttributeKind.FLOAT: "a number",
    AttributeKind.BOOLEAN: "true or false",
}


class TypedValueIn(WireModel):
    """An attribute's value and its type, given explicitly: in JSON, 3 may be an integer or a
    float, and a date or a URL is a string."""

    model_config = ConfigDict(extra="forbid")

    type: AttributeKind
    value: str | bool | int | float


class ProfileEditsIn(WireModel):
    """One `profile().edit(...)`: attributes set (a typed value) or removed (null), tag
    collections as the Custom Data API's `ut.` values, and the installation's language and
    region. Types and limits are the Custom Data API's (its parse_value): a value it would
    refuse is refused here, naming the entry."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, TypedValueIn | None] = Field(
        default_factory=dict, max_length=MAX_PROFILE_EDITS
    )
    tags: dict[str, Any] = Field(default_factory=dict, max_length=MAX_PROFILE_EDITS)
    language: Language | None = None
    region: Region | None = None

    @cached_property
    def operations(self) -> list[Operation]:
        """The attribute and tag edits as Custom Data operations, parsed while validating."""
        operations: list[Operation] = []
        for name, typed in self.attributes.items():
            _check_name(("attributes", name), name)
            if typed is None:
                operations.append(DeleteAttribute(name))
            else:
                operations.append(_set_attribute(name, typed))
        for name, value in self.tags.items():
            _check_name(("tags", name), name)
            key = f"ut.{name}"
            operations.append(_data_operation(("tags", name), key, value))
        return operations

    @model_validator(mode="after")
    def _parse_edits(self) -> ProfileEditsIn:
        if not self.operations and not {"language", "region"} & self.model_fields_set:
            raise ValueError("nothing to edit: give attributes, tags, language or region")
        return self


def _check_name(where: tuple[str, ...], name: str) -> None:
    if not NAME.fullmatch(name):
        raise _refused(where, "names use a-z, 0-9 and _, at most 30 characters")


def _set_attribute(name: str, typed: TypedValueIn) -> Operation:
    where = ("attributes", name, "value")
    value = typed.value
    if typed.type is AttributeKind.FLOAT and type(value) is int:
        value = float(value)  # JSON writes the float 3.0 as 3 (JavaScript's JSON.stringify does)
    key = _DATA_KEY.get(typed.type, "u.{}").format(name)
    operation = _data_operation(where, key, value)
    if isinstance(operation, SetAttribute) and operation.kind is not typed.type:
        raise _refused(where, f"{_EXPECTED[typed.type]}, as its type says")
    return operation


def _data_operation(where: tuple[str, ...], key: str, value: Any) -> Operation:
    """The Custom Data API's reading of `key: value`; its refusal names `where` instead."""
    try:
        return parse_value(key, value)
    except ValueError as exc:
        raise _refused(where, str(exc).removeprefix(f"{key}: ")) from None


def _refused(where: tuple[str, ...], why: str) -> ValidationError:
    detail = InitErrorDetails(type=PydanticCustomError("profile_edit", why), loc=where, input=None)
    return ValidationError.from_exception_data(ProfileEditsIn.__name__, [detail])


class ProfileEdited(BaseModel):
    """The custom user id whose profile the edit changed (null: only language or region), and
    how many entries it applied."""

    custom_id: str | None
    accepted: int
