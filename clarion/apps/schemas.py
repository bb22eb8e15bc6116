"""Wire format of the admin API for companies, apps, keys and provider credentials."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clarion.formats import WireModel

PlatformName = Literal["ios", "android", "web"]


class AppCreate(WireModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    platform: PlatformName
    default_timezone: str = "UTC"


class AppRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    platform: PlatformName
    default_timezone: str
    vapid_public_key: str | None
    has_apns_credentials: bool
    has_fcm_credentials: bool
    has_webpush_credentials: bool
    created_at: datetime


class AppKeys(BaseModel):
    """Shown once, at creation or rotation; only hashes are kept."""

    api_key: str  # Live
    dev_api_key: str


class AppCreated(AppRead, AppKeys):
    # Present only when creating the app also created its company (first app of a database).
    rest_api_key: str | None = None


class ApnsCredentialsIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    key_id: str = Field(min_length=1, max_length=20)
    team_id: str = Field(min_length=1, max_length=20)
    private_key: str = Field(min_length=1, description="The .p8 file's PEM content")
    topic: str = Field(min_length=1, max_length=255, description="The app's bundle id")
    environment: Literal["production", "sandbox"] = "production"


class FcmCredentialsIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    service_account: dict[str, Any]


class WebPushCredentialsIn(WireModel):
    """Import an existing VAPID key pair; web apps get a generated one at creation."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(pattern=r"^(mailto:|https://)", max_length=255)
    private_key: str | None = Field(default=None, description="PKCS#8 PEM; omit to keep the key")
