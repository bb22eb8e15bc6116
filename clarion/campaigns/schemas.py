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
from clarion.formats import WireModel, ab_shares, check_ab_versions, parse_wire_date
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
    sent_optins: int = 0
    direct_open: int = 0
    influenced_open: int = 0
    reengaged: int = 0
    errors: int = 0


class DayStats(VersionStats):
    date: str
    versions: dict[str, VersionStats] | None = None


class CampaignStats(BaseModel):
    campaign_token: str
    detail: list[DayStats]
