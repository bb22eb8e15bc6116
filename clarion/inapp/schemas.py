"""In-App Campaigns API 1.1 wire format (spec §6), themes, and what the SDK is handed.

Where Batch is silent Clarion decides, and docs/inapp.md says so: event triggers, A/B versions
(as for push: `contents[].version` and `version_split`), action codes, theme fields, the SDK's
answer. Unknown fields of a campaign are ignored, as on the Campaigns API.
"""

from __future__ import annotations

import re
import sys
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from clarion.delivery.schemas import Label
from clarion.formats import (
    HTTPS_URL,
    Id,
    WireModel,
    ab_shares,
    check_ab_versions,
    json_object_text,
    parse_wire_date,
)
from clarion.targeting.schemas import Targeting

_DATE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$"  # yyyy-MM-ddTHH:mm:ss, no zone
# A CSS colour Clarion writes into a page as it is: #RGB, #RGBA, #RRGGBB or #RRGGBBAA only.
_COLOUR = r"^#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$"
Colour = Annotated[str, Field(pattern=_COLOUR)]
# A font family list written into CSS: letters, digits, spaces, commas, hyphens, quotes.
_FONT_FAMILY = r"^[A-Za-z0-9 ,'\-]{1,100}$"
THEME_CODE = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
MAX_ACTIONS = 4
# What the live campaigns of one app may test in all: the fetch evaluates every distinct
# criterion of them in one statement (clarion.inapp.eligibility), and PostgreSQL reads at most
# 1,664 columns and 65,535 parameters in a statement, SQLite 2,000 columns (bench/inapp_fetch.py's
# 200 campaigns test 50 criteria).
MAX_LIVE_CRITERIA = 1_000
MAX_LIVE_VALUES = 20_000
MAX_THEMES = 100  # per app
# An action's args as JSON: a link of 2,048 characters and a few keys (a push is 4 KB in all).
MAX_ARGS_BYTES = 4096
# "e.NAME" as the SDK API accepts an event name, "ue.NAME" as the Trigger Events API does.
_TRIGGER_EVENT = r"^(e\.[a-zA-Z0-9][a-zA-Z0-9_]{0,29}|ue\.[a-z0-9_]{1,30})$"


def _language(value: str) -> str:
    value = value.lower()
    if value != "default" and not (2 <= len(value) <= 3 and value.isalpha()):
        raise ValueError(f"{value!r} is not a language code (or 'default')")
    return value


# Themes -----------------------------------------------------------------------------------------


class Layout(StrEnum):
    MODAL = "modal"
    BANNER_TOP = "banner_top"
    BANNER_BOTTOM = "banner_bottom"
    FULLSCREEN = "fullscreen"
    IMAGE = "image"  # the image alone, tappable; header/title/body are not drawn


class CloseButton(StrEnum):
    TOP_RIGHT = "top_right"
    TOP_LEFT = "top_left"
    NONE = "none"  # closed by an action only (or, for banners, by swiping / the timeout)


class ThemeColours(WireModel):
    model_config = ConfigDict(extra="forbid")

    background: Colour = "#FFFFFF"
    text: Colour = "#1F2933"
    header: Colour = "#52606D"
    title: Colour = "#1F2933"
    button_background: Colour = "#2563EB"
    button_text: Colour = "#FFFFFF"
    close: Colour = "#52606D"
    # Behind a modal or full-screen message.
    backdrop: Colour = "#00000080"


class ThemeFont(WireModel):
    model_config = ConfigDict(extra="forbid")

    family: str = Field(default="system-ui, sans-serif", pattern=_FONT_FAMILY)
    size: int = Field(default=16, ge=10, le=32)  # px, the body's; titles scale from it


class ThemeBody(WireModel):
    """A theme as the admin API and the dashboard accept it; its code is in the path."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    layout: Layout = Layout.MODAL
    colours: ThemeColours = Field(default_factory=ThemeColours)
    font: ThemeFont = Field(default_factory=ThemeFont)
    close_button: CloseButton = CloseButton.TOP_RIGHT
    corner_radius: int = Field(default=12, ge=0, le=48)  # px
    # Banners close by themselves after this many seconds (0: they stay).
    auto_close_seconds: int = Field(default=0, ge=0, le=120)


class ThemeRead(ThemeBody):
    code: str
    built_in: bool = False


# Landing: the message itself (in-app campaigns, and pushes that open one) ----------------------


class ActionKind(StrEnum):
    """What a button does. `continue` and `dismiss` both close the message; a tap on either is
    a click of that button (its position and label are counted)."""

    CONTINUE = "continue"
    DISMISS = "dismiss"
    DEEPLINK = "deeplink"  # opens args.l (a URL or an app scheme), then closes


class LandingAction(WireModel):
    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=64)
    action: ActionKind
    args: dict[str, Any] | None = None

    @field_validator("action", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        # Batch's examples write "continue" and "DISMISS"; its SDKs name them "batch.dismiss".
        if isinstance(value, str):
            value = value.lower().removeprefix("batch.")
        return value

    @model_validator(mode="after")
    def _deeplink_has_url(self) -> LandingAction:
        if self.action is ActionKind.DEEPLINK:
            link = (self.args or {}).get("l")
            if not isinstance(link, str) or not 1 <= len(link) <= 2048:
                raise ValueError("a deeplink action needs args.l, the link (1 to 2048 chars)")
        if self.args is not None and len(self.args) > 10:
            raise ValueError("args: at most 10 keys")
        if self.args is not None and _json_size(self.args) > MAX_ARGS_BYTES:
            raise ValueError(f"args: at most {MAX_ARGS_BYTES:,} bytes once written as JSON")
        return self


def _json_size(value: Any) -> int:
    """Bytes of `value` as JSON; past orjson's nesting limit (254 levels, which pydantic's
    serialiser reaches at 255 and answers with an error), more than any limit."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return sys.maxsize


class LandingContent(WireModel):
    """The message in one language (and, with A/B testing, one version)."""

    model_config = ConfigDict(extra="forbid")

    language: str = "default"
    version: str | None = Field(default=None, pattern=r"^[a-z]$")
    header: str | None = Field(default=None, max_length=256)
    title: str | None = Field(default=None, max_length=256)
    body: str | None = Field(default=None, max_length=4096)
    actions: list[LandingAction] = Field(default_factory=list, max_length=MAX_ACTIONS)

    @field_validator("language")
    @classmethod
    def _language_code(cls, value: str) -> str:
        return _language(value)


class Landing(WireModel):
    model_config = ConfigDict(extra="forbid")

    theme: Annotated[str, Field(pattern=THEME_CODE)] = "default"
    image: str | None = Field(default=None, pattern=HTTPS_URL, max_length=2048)
    image_description: str | None = Field(default=None, max_length=256)
    contents: list[LandingContent] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _something_to_show(self) -> Landing:
        for index, content in enumerate(self.contents):
            if self.image is None and not (content.header or content.title or content.body):
                raise PydanticCustomError(
                    "landing_empty",
                    "contents.{index}: give a header, a title or a body (or landing.image)",
                    {"index": index},
                )
        return self


# In-app campaigns -------------------------------------------------------------------------------


class TriggerWhen(StrEnum):
    NEXT_SESSION = "NEXT_SESSION"  # the next time the app starts (or the page loads)
    NOW = "NOW"  # as soon as the SDK has it, the app being in the foreground
    EVENT = "EVENT"  # the next time the app is in the foreground after `event`


class GraceUnit(StrEnum):
    MINUTES = "MINUTES"
    HOURS = "HOURS"
    DAYS = "DAYS"


class GracePeriod(WireModel):
    """At least this long between two displays of the campaign on one installation."""

    model_config = ConfigDict(extra="forbid")

    every: int = Field(ge=1, le=10_000)
    unit: GraceUnit = GraceUnit.HOURS

    @field_validator("unit", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def seconds(self) -> int:
        return self.every * {"MINUTES": 60, "HOURS": 3600, "DAYS": 86400}[self.unit.value]


class Trigger(WireModel):
    model_config = ConfigDict(extra="forbid")

    when: TriggerWhen
    # With when = EVENT: "e.NAME" for an event the SDK tracks (matched on the device), or
    # "ue.NAME" for one of the Trigger Events API (matched on the server by custom id).
    event: str | None = Field(default=None, pattern=_TRIGGER_EVENT)
    # Only events with this label fire it.
    label: Annotated[Id, Field(max_length=200)] | None = None
    # At most this many displays per installation (absent: no limit).
    capping: int | None = Field(default=None, ge=1, le=1000)
    grace_period: GracePeriod | None = None

    @field_validator("when", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        # "NEXT_SESSION" in Batch's create example, "next_session" in its get output.
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _event_when_event(self) -> Trigger:
        if self.when is TriggerWhen.EVENT and self.event is None:
            raise PydanticCustomError(
                "missing_field",
                "event is required when `when` is EVENT",
                {"field": "trigger.event"},
            )
        if self.when is not TriggerWhen.EVENT and (self.event or self.label):
            raise ValueError("event and label apply to when = EVENT only")
        return self

    @property
    def server_event(self) -> str | None:
        """The Trigger Events API event this fires on, if any."""
        return self.event if self.event is not None and self.event.startswith("ue.") else None


# Dates a zone can move by a day either way and stay a date Python holds (a local date in an
# old zone offset, -15 h for America/Sitka before 1867, overflowed at year 1).
_FIRST_WIRE_DATE, _LAST_WIRE_DATE = "0002-01-01T00:00:00", "9998-12-31T23:59:59"


def _date_or_now(value: str | None) -> str | None:
    if value is not None and value != "now":
        try:
            _local_date(value)
        except ValueError as exc:
            raise ValueError(f"must be 'now' or a UTC date yyyy-MM-ddTHH:mm:ss: {exc}") from exc
    return value


def _local_date(value: str | None) -> str | None:
    if value is not None:
        if not re.fullmatch(_DATE.strip("^$"), value):
            raise ValueError("is not a date yyyy-MM-ddTHH:mm:ss")
        parse_wire_date(value)
        if not _FIRST_WIRE_DATE <= value <= _LAST_WIRE_DATE:
            raise ValueError(f"must be between {_FIRST_WIRE_DATE} and {_LAST_WIRE_DATE}")
    return value


class InAppCampaignBody(WireModel):
    """The create body, and what an update must add up to once merged with the stored one."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=3, max_length=256)
    live: bool
    # Dashboard filtering only: label capping does not apply to in-app (spec §6).
    labels: list[Label] = Field(default_factory=list, max_length=3)
    start_date: str | None = None
    local_start_date: str | None = Field(default=None, pattern=_DATE)
    end_date: str | None = Field(default=None, pattern=_DATE)
    local_end_date: str | None = Field(default=None, pattern=_DATE)
    trigger: Trigger
    targeting: Targeting | None = None
    landing: Landing
    deeplink: str | None = Field(default=None, min_length=1, max_length=255)
    custom_payload: str | None = None
    # A/B: each version's share of the installations (percent, summing to 100); without it
    # the versions share them equally.
    version_split: dict[str, int] | None = None

    @field_validator("start_date")
    @classmethod
    def _start(cls, value: str | None) -> str | None:
        return _date_or_now(value)

    @field_validator("local_start_date", "end_date", "local_end_date")
    @classmethod
    def _dates(cls, value: str | None) -> str | None:
        return _local_date(value)

    @field_validator("custom_payload")
    @classmethod
    def _payload(cls, value: str | None) -> str | None:
        return None if value is None else json_object_text(value)

    @model_validator(mode="after")
    def _rules(self) -> InAppCampaignBody:
        if self.start_date is not None and self.local_start_date is not None:
            raise ValueError("start_date and local_start_date are mutually exclusive")
        if self.end_date is not None and self.local_end_date is not None:
            raise ValueError("end_date and local_end_date are mutually exclusive")
        start = self.local_start_date or (None if self.start_date == "now" else self.start_date)
        end = self.end_date or self.local_end_date
        # Same fixed-width form: compared as text, they compare as dates.
        if start is not None and end is not None and end <= start:
            field = "end_date" if self.end_date is not None else "local_end_date"
            raise PydanticCustomError(
                "end_before_start",
                "{field}: the end date is not after the start date",
                {"field": field},
            )
        self._check_versions()
        return self

    def _check_versions(self) -> None:
        items = [(content.version, content.language) for content in self.landing.contents]
        check_ab_versions(items, self.version_split, what="landing contents")

    @property
    def versions(self) -> dict[str | None, int]:
        """Each version and its share of the installations (percent); {None: 100} without A/B."""
        contents = self.landing.contents
        return ab_shares((content.version for content in contents), self.version_split)


class InAppCampaignCreated(BaseModel):
    campaign_token: str


class InAppCampaignSummary(BaseModel):
    """An item of `in-app-campaigns/list`: the basic fields, as for push campaigns."""

    campaign_token: str
    from_api: bool
    dev_only: bool
    created_date: str
    name: str
    live: bool
    start_date: str | None = None
    local_start_date: str | None = None
    end_date: str | None = None
    local_end_date: str | None = None


# Statistics -------------------------------------------------------------------------------------


class CtaClicks(BaseModel):
    position: int  # 0 for the first button
    label: str | None
    clicked: int


class InAppCounts(BaseModel):
    supplied: int = 0  # installations handed the message (each once)
    shown: int = 0
    clicked: int = 0  # taps on any button
    closed: int = 0  # closed without a button (close button, swipe, timeout)
    click_rate: float | None = None  # clicked / shown; None before it was shown
    ctas: list[CtaClicks] = Field(default_factory=list)


class InAppDayStats(InAppCounts):
    date: str  # UTC day, YYYY-MM-DD
    versions: dict[str, InAppCounts] | None = None


class InAppStats(BaseModel):
    campaign_token: str
    detail: list[InAppDayStats]


# What the SDK is handed (GET /sdk/v1/{key}/installations/{id}/inapp-messages) --------------------
#
# The contract with the SDKs (docs/inapp.md, "Delivery to installations"). Every field is always
# present (null when it does not apply), in this order; the answer's ETag is a hash of its bytes.


class SdkTrigger(BaseModel):
    """When to show the message; capping and grace period are the SdkMessage's."""

    when: Literal["next_session", "now", "event"]
    # With `event`: "e.NAME" (an event the SDK tracks, matched on the device) or "ue.NAME" (one
    # the Trigger Events API received for the installation's custom user id).
    event: str | None = None
    # Only occurrences with this label fire it.
    label: str | None = None
    # For a `ue.` event: when the server last received it for this user (UTC, ISO 8601, to
    # the second); null until it did. The SDK shows the message, at the next time the app is in
    # the foreground, once for each value newer than the last one it acted on.
    last_server_event_at: str | None = None


class SdkTheme(BaseModel):
    """How to draw the messages that name it (ThemeBody's fields)."""

    code: str
    layout: Layout
    colours: dict[str, str]
    font: dict[str, Any]
    close_button: CloseButton
    corner_radius: int
    auto_close_seconds: int


class SdkMessage(BaseModel):
    """One campaign, resolved for the installation: its language, its version, its theme."""

    campaign_token: str
    # The installation's A/B version (null without A/B testing), the same at every fetch:
    # report it with the message's events.
    version: str | None
    trigger: SdkTrigger
    # At most this many displays on the device (null: no limit), and at least this long
    # between two displays (0: none).
    capping: int | None
    grace_period_seconds: int
    # UTC instants (ISO 8601, "Z") between which it may be shown, local dates already
    # resolved in the installation's time zone; null: no bound. The answer only holds messages
    # already started; the SDK stops showing one after its end.
    start: str | None
    end: str | None
    # The code of its theme, a key of SdkMessages.themes.
    theme: str
    image: str | None
    image_description: str | None
    # The content in the installation's language (else the `default` content, else the first).
    header: str | None
    title: str | None
    body: str | None
    # The buttons in order (position 0 first): label, action (continue, dismiss, deeplink)
    # and its args (deeplink: {"l": url}).
    actions: list[dict[str, Any]]
    deeplink: str | None
    custom_payload: dict[str, Any] | None


class SdkMessages(BaseModel):
    messages: list[SdkMessage]
    # The themes the messages name, by code (each once, however many messages use it).
    themes: dict[str, SdkTheme]
    # Ask again after this many seconds (with If-None-Match); sooner on an app start.
    refresh_seconds: int
