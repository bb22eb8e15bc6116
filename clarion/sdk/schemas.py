"""Wire format of the SDK API (what apps and web pages send). Reference: docs/sdk-api.md."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clarion.events.models import InAppEventKind
from clarion.formats import HTTPS_URL, Id, WireModel

_TIMEZONES = frozenset(available_timezones())


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
    language: str | None = Field(default=None, pattern=r"^[a-zA-Z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
    region: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$|^[0-9]{3}$")
    timezone: str | None = Field(default=None, max_length=64)
    app_version: str | None = Field(default=None, max_length=64)
    os_version: str | None = Field(default=None, max_length=64)
    device_model: str | None = Field(default=None, max_length=128)
    push_optin: bool | None = None

    @field_validator("region")
    @classmethod
    def _upper_region(cls, value: str | None) -> str | None:
        # Stored upper-case: targeting compares regions as they are, which keeps indexes and
        # the planner's statistics usable.
        return None if value is None else value.upper()

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
