"""Wire format of the admin API for companies, apps, keys and provider credentials."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from clarion.formats import Text, WireModel

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
    allowed_origins: list[str]
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


# Browsers allow a list of origins per app, each as they write the Origin header. 50 covers a
# brand's sites, their staging and a few developers' ports; more is a sign of a wildcard need,
# which is refused (a wildcard would let any page spend the app's key).
MAX_ALLOWED_ORIGINS = 50
# scheme "://" host (253) ":" port (5), with room for an IPv6 literal's brackets.
MAX_ORIGIN_LENGTH = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def normalise_origin(value: str) -> str:
    """An origin as a browser serialises it in the Origin header (RFC 6454 §6.2): the scheme
    and host in lower case, an international name in punycode, no default port, nothing after
    the host but a lone "/". Anything that is not such an origin is refused with the reason."""
    given = value.strip()
    if "*" in given:
        raise ValueError("wildcards are not allowed: list each origin, e.g. http://localhost:3000")
    if any(c.isspace() for c in given):
        raise ValueError("an origin holds no spaces")
    try:
        parts = urlsplit(given)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not an origin ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc:
        raise ValueError(
            "must be http:// or https:// followed by a host, e.g. https://shop.example"
        )
    if "@" in parts.netloc:
        raise ValueError("an origin has no user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment or given.endswith(("?", "#")):
        raise ValueError("an origin has no path, query or fragment: scheme://host[:port] only")
    host = _host(parts.hostname or "")
    if port == 0:
        raise ValueError("port 0 is not a port")
    suffix = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{suffix}"


def _host(name: str) -> str:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"{name!r} is not a host name") from None
    labels = ascii_name.split(".")
    if not name or len(ascii_name) > 253 or not all(_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"{name!r} is not a host name")
    return ascii_name


Origin = Annotated[Text, Field(max_length=MAX_ORIGIN_LENGTH), AfterValidator(normalise_origin)]


class AllowedOriginsIn(WireModel):
    """The whole list, replacing the previous one; `[]` allows no web page."""

    model_config = ConfigDict(extra="forbid")

    allowed_origins: list[Origin] = Field(max_length=MAX_ALLOWED_ORIGINS)
