"""Wire format of the SDK API (what apps and web pages send). Reference: docs/sdk-api.md."""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Annotated, Any
from zoneinfo import available_timezones

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
from clarion.formats import HTTPS_URL, NAME, Id, WireModel

_TIMEZONES = frozenset(available_timezones())

Language = Annotated[str, Field(pattern=r"^[a-zA-Z]{2,3}([-_][A-Za-z0-9]{2,8})*$")]
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


class TrackedEventIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    # A leading "_" is Clarion's own (app opens are tracked as "_open").
    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_]{0,29}$")
    label: Annotated[Id, Field(max_length=200)] | None = None
    attributes: dict[str, Any] | None = None
    tags: list[Annotated[Id, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=25
    )
    occurred_at: datetime | None = None


class TrackedEventsIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    events: list[TrackedEventIn] = Field(min_length=1, max_length=100)


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
