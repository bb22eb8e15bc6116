"""Campaigns API 1.1 wire format (spec §4), and Clarion's documented choices where Batch is
silent: recurrence fields, A/B versions, the fallback language (docs/campaigns.md).

Unknown fields are ignored, as on the Transactional API: a Batch integration keeps working when
it sends fields Clarion does not use.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError

from clarion.delivery.schemas import CollapseKey, PushOptions
from clarion.formats import NAME, WireModel, ab_shares, check_ab_versions, parse_wire_date
from clarion.inapp.schemas import Landing
from clarion.targeting.schemas import Targeting

_DATE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$"  # yyyy-MM-ddTHH:mm:ss, no zone (spec §4.1)


class RepeatUnit(StrEnum):
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"


class Recurrence(WireModel):
    """Every `repeat_frequency` `repeat_unit`s from the first push time, until `end_date`
    (inclusive, same clock as the first push time) or `occurrences` runs, whichever is first."""

    model_config = ConfigDict(extra="forbid")

    repeat_unit: RepeatUnit
    repeat_frequency: int = Field(default=1, ge=1, le=366)
    end_date: str | None = Field(default=None, pattern=_DATE)
    occurrences: int | None = Field(default=None, ge=1, le=10_000)

    @field_validator("end_date")
    @classmethod
    def _real_date(cls, value: str | None) -> str | None:
        if value is not None:
            parse_wire_date(value)
        return value


# The fields of one landing content, which Batch's push form may give flat on `landing` itself.
_FLAT_CONTENT = ("header", "title", "body", "actions")


class PushLanding(Landing):
    """The message a tap on a push opens in the app: the in-app `landing` (theme, image,
    `contents[]` per language), or Batch's flat form (`header`, `title`, `body`, `actions` on
    the landing itself), read as one content of the language "default". A/B versions are the
    push's own (`messages[].version`): a landing content names none."""

    @model_validator(mode="before")
    @classmethod
    def _flat_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and "contents" not in data:
            content = {name: data[name] for name in _FLAT_CONTENT if name in data}
            if content:
                rest = {k: v for k, v in data.items() if k not in _FLAT_CONTENT}
                return {**rest, "contents": [{"language": "default", **content}]}
        return data

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The document declares both forms: `contents[]`, or the flat one (one content's
        fields, its language and version aside, beside theme and image)."""
        json_schema = super().__get_pydantic_json_schema__(schema, handler)
        if handler.mode != "validation":
            return json_schema
        found = handler.resolve_ref_schema(json_schema)
        properties = dict(found["properties"])
        content = handler.resolve_ref_schema(properties.pop("contents")["items"])
        flat = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                **properties,
                **{name: content["properties"][name] for name in _FLAT_CONTENT},
            },
        }
        nested = {k: found.pop(k) for k in list(found) if k not in ("title", "description")}
        found["anyOf"] = [nested, flat]
        return json_schema

    @field_validator("contents")
    @classmethod
    def _one_per_language(cls, contents: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for index, content in enumerate(contents):
            if content.version is not None:
                _refuse(
                    (index, "version"),
                    "a push's landing has no A/B versions (its messages"
                    " have them: messages[].version)",
                )
            if content.language in seen:
                _refuse((index, "language"), f"a second content for {content.language!r}")
            seen.add(content.language)
        return contents


def _refuse(where: tuple[str | int, ...], why: str) -> None:
    detail = InitErrorDetails(type=PydanticCustomError("landing", why), loc=where, input=None)
    raise ValidationError.from_exception_data("PushLanding", [detail])


def landing_beside(landing: PushLanding | None, info: ValidationInfo) -> PushLanding | None:
    """The rules between a push's `landing` and its other fields (validated before it)."""
    if landing is not None:
        if info.data.get("deeplink") is not None:
            # Spec §3.1: a tap opens one or the other.
            raise ValueError("deeplink and landing are mutually exclusive")
        if info.data.get("push_type") == "background":
            raise ValueError("a background push shows nothing to tap: it cannot open a landing")
    return landing


class CampaignMessage(WireModel):
    language: str
    # A/B testing: the version this message belongs to ("a", "b", ...); absent without A/B.
    version: str | None = Field(default=None, pattern=r"^[a-z]$")
    title: str | None = Field(default=None, max_length=256)
    body: str = Field(min_length=1, max_length=4096)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        value = value.lower()
        if value != "default" and not (2 <= len(value) <= 3 and value.isalpha()):
            raise ValueError(f"{value!r} is not a language code (or 'default')")
        return value


# An event a trigger names: `ue.<name>` (Trigger Events API, on custom user ids) or `e.<name>`
# (tracked by an SDK, on installations), as targeting names them. Unknown names are allowed
# (the event may not have been seen yet); malformed ones are not.
EVENT_NAME = r"^(ue|e)\.[a-zA-Z0-9][a-zA-Z0-9_]{0,29}$"
_CLOCK = r"^([01]\d|2[0-3]):[0-5]\d$"  # HH:MM, 24-hour
MAX_DELAY_SECONDS = 30 * 24 * 3600  # the "0 s to 30 days"
MAX_CANCEL_EVENTS = 10
# Same bounds as an event's own attributes (Trigger Events API: at most 15).
MAX_CONDITION_ATTRIBUTES = 15


class CancelEvent(WireModel):
    """An event that cancels a user's pending entry; with `match_attribute`, only when its
    value equals the trigger event's (the same `sku`)."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(pattern=EVENT_NAME)
    match_attribute: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,30}$")


class QuietHours(WireModel):
    """A daily window in the user's local time (it may span midnight: 22:00 to 08:00) during
    which a due push waits for the window's end."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(pattern=_CLOCK)
    end: str = Field(pattern=_CLOCK)

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet_hours: start and end are the same time")
        return self


class Conversion(WireModel):
    """What the automation's statistics count as a conversion: this event from the user within
    `within_hours` of the push."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(pattern=EVENT_NAME)
    within_hours: int = Field(default=24, ge=1, le=720)


# A string at most as long as an event attribute's (64), checked in Trigger so that the error
# names the attribute rather than a member of the union.
ConditionValue = str | int | float | bool


class Trigger(WireModel):
    """What makes an automation send (docs/campaigns.md, "Automations"): an event, an optional
    condition on its label and attributes (equality), a delay, cancel events, how often a user
    may enter, quiet hours, and the conversion its statistics count."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(pattern=EVENT_NAME)
    label: str | None = Field(default=None, min_length=1, max_length=200)
    attributes: dict[str, ConditionValue] | None = Field(
        default=None, max_length=MAX_CONDITION_ATTRIBUTES
    )
    delay_seconds: int = Field(default=0, ge=0, le=MAX_DELAY_SECONDS)
    # Sent at the next HH:MM of the user's local time once the delay has passed.
    at_local_time: str | None = Field(default=None, pattern=_CLOCK)
    cancel_events: list[CancelEvent] = Field(default_factory=list, max_length=MAX_CANCEL_EVENTS)
    # At most one entry per user every this many days; absent: every event enters.
    once_per_days: int | None = Field(default=None, ge=1, le=3650)
    quiet_hours: QuietHours | None = None
    conversion: Conversion | None = None

    @field_validator("attributes")
    @classmethod
    def _attribute_names(
        cls, value: dict[str, ConditionValue] | None
    ) -> dict[str, ConditionValue] | None:
        for name, wanted in (value or {}).items():
            if not NAME.fullmatch(name):
                raise ValueError(f"attribute name {name!r}: use a-z, 0-9 and _, at most 30")
            if isinstance(wanted, str) and len(wanted) > 64:
                raise ValueError(f"attribute {name!r}: strings have at most 64 characters")
        return value

    @property
    def stored_event(self) -> str:
        """The name as the event log stores it (clarion.events: SDK names lower-cased without
        their prefix, server ones as `ue.<name>`)."""
        return stored_event_name(self.event)


def stored_event_name(event: str) -> str:
    prefix, _, name = event.partition(".")
    return name.lower() if prefix == "e" else f"ue.{name.lower()}"


class CampaignBody(PushOptions):
    """The create body, and what an update must add up to once merged with the stored one."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=3, max_length=256)
    live: bool
    push_time: str | None = None
    local_push_time: str | None = Field(default=None, pattern=_DATE)
    recurrence: Recurrence | None = None
    # How many times one installation may receive a recurring campaign, in all.
    capping: int | None = Field(default=None, ge=1)
    targeting: Targeting | None = None
    messages: list[CampaignMessage] = Field(min_length=1, max_length=200)
    # A/B: the share of the audience (percent, summing to 100) each version reaches; without
    # it the versions share the audience equally.
    version_split: dict[str, int] | None = None
    # Batch's get output shows it as a plain string; the create body documents the object.
    gcm_collapse_key: CollapseKey | str | None = None
    landing: PushLanding | None = None
    # An automation: sent when a user's event says so, not at a date (docs/campaigns.md).
    trigger: Trigger | None = None

    @field_validator("landing")
    @classmethod
    def _landing(cls, value: PushLanding | None, info: ValidationInfo) -> PushLanding | None:
        return landing_beside(value, info)

    @field_validator("push_time")
    @classmethod
    def _push_time(cls, value: str | None) -> str | None:
        if value is not None and value != "now":
            try:
                parse_wire_date(value)
            except ValueError as exc:
                raise ValueError("must be 'now' or a UTC date yyyy-MM-ddTHH:mm:ss") from exc
        return value

    @field_validator("local_push_time")
    @classmethod
    def _local_push_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_wire_date(value)
        return value

    @model_validator(mode="after")
    def _rules(self) -> CampaignBody:
        if self.trigger is not None:
            self._automation_rules()
            self._check_versions()
            return self
        if self.push_time is not None and self.local_push_time is not None:
            raise ValueError("push_time and local_push_time are mutually exclusive")
        if self.push_time is None and self.local_push_time is None:
            raise PydanticCustomError(
                "missing_field", "push_time is required", {"field": "push_time"}
            )
        if self.capping is not None and self.recurrence is None:
            raise ValueError("capping applies to recurring campaigns only")
        if self.recurrence is not None and self.push_time == "now":
            raise ValueError("a recurring campaign needs a date as push_time, not 'now'")
        first = self.push_time or self.local_push_time
        end = self.recurrence.end_date if self.recurrence is not None else None
        if end is not None and first is not None and end < first:
            raise ValueError("recurrence.end_date is before the first push time")
        self._check_versions()
        return self

    def _automation_rules(self) -> None:
        """An automation's time comes from its trigger: no date, recurrence or per-campaign
        capping (app-wide and label caps apply, docs/campaigns.md)."""
        for name in ("push_time", "local_push_time", "recurrence", "capping"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} does not apply to an automation (it has a trigger)")

    @property
    def is_automation(self) -> bool:
        return self.trigger is not None

    def _check_versions(self) -> None:
        items = [(message.version, message.language) for message in self.messages]
        check_ab_versions(items, self.version_split, what="messages")

    def template_fields(self) -> list[tuple[str, str | None]]:
        """The texts that may be templates, with their paths in the body (for errors)."""
        fields: list[tuple[str, str | None]] = [("deeplink", self.deeplink)]
        for index, message in enumerate(self.messages):
            fields += [(f"messages.{index}.title", message.title)]
            fields += [(f"messages.{index}.body", message.body)]
        return fields

    @property
    def versions(self) -> dict[str | None, int]:
        """Each version and its share of the audience (percent); {None: 100} without A/B."""
        return ab_shares((message.version for message in self.messages), self.version_split)


class EstimateIn(WireModel):
    targeting: Targeting | None = None


class CampaignCreated(BaseModel):
    campaign_token: str


class CampaignSummary(BaseModel):
    """An item of `campaigns/list`: the basic fields only, as Batch answers (spec §4.4)."""

    campaign_token: str
    from_api: bool
    dev_only: bool
    created_date: str
    name: str
    live: bool
    push_time: str | None = None
    local_push_time: str | None = None
    state: str  # Clarion's addition: draft, scheduled, running, completed, stopped, failed


class VersionStats(BaseModel):
    sent: int = 0
    # Clarion's addition: of `sent`, those sent again after an unknown outcome (a timeout, a
    # worker that died mid-send), which the device may have received twice (docs/delivery.md).
    resent: int = 0
    sent_optins: int = 0
    direct_open: int = 0
    influenced_open: int = 0
    reengaged: int = 0
    errors: int = 0


class DayStats(VersionStats):
    date: str
    versions: dict[str, VersionStats] | None = None


class EntryDay(BaseModel):
    """An automation's entries that finished on one UTC day: sent, cancelled, skipped, and the
    sent ones that converted (with a conversion event only)."""

    date: str
    sent: int = 0
    cancelled: int = 0
    skipped: int = 0
    converted: int | None = None


class AutomationStats(BaseModel):
    """Clarion's addition to an automation's statistics: what became of its entries (each a
    user an event entered) that finished since `since` (sent, cancelled: by the cancel event's
    name or "paused", skipped: "audience", "cap:<key>", "unreachable", ...), those pending now,
    its pushes on the UTC days since then, and, with a `trigger.conversion`, the entries sent
    whose user then tracked that event within `within_hours`."""

    since: str
    entries: int  # pending + sent + cancelled + skipped
    pending: int
    sent: int
    cancelled: int
    skipped: int
    cancelled_reasons: dict[str, int]
    skipped_reasons: dict[str, int]
    pushes: VersionStats
    conversion: Conversion | None = None
    converted: int | None = None
    detail: list[EntryDay]


class CampaignStats(BaseModel):
    campaign_token: str
    detail: list[DayStats]
    # An automation's only.
    automation: AutomationStats | None = None
