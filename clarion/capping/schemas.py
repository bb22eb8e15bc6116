"""Wire format of an app's push caps (admin API `PUT/GET /admin/v1/apps/{id}/push-caps`, the
dashboard's settings page): at most `max` pushes per installation in `hours`, across all
automations and per campaign label."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clarion.capping.models import MAX_CAP_HOURS
from clarion.delivery.schemas import MAX_LABEL_LENGTH
from clarion.formats import WireModel

# A cap of more than 1,000 pushes is no cap (one every 43 minutes for 30 days).
MAX_CAP_PUSHES = 1000
# An app's campaigns carry at most 3 labels each; 100 capped labels covers a marketing team's
# themes, and bounds what every fan-out page and automation send reads (one query per cap).
MAX_CAPPED_LABELS = 100


class CapIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    max: int = Field(ge=1, le=MAX_CAP_PUSHES, description="pushes per installation")
    hours: int = Field(ge=1, le=MAX_CAP_HOURS, description="the sliding period, in hours")


class PushCapsIn(WireModel):
    """The whole setting, replacing the previous one: `{}` caps nothing."""

    model_config = ConfigDict(extra="forbid")

    automations: CapIn | None = Field(
        default=None, description="across every automation's pushes (not campaigns')"
    )
    labels: dict[str, CapIn] = Field(
        default_factory=dict,
        max_length=MAX_CAPPED_LABELS,
        description="per label code: pushes of automations and scheduled campaigns so labelled",
    )

    @field_validator("labels")
    @classmethod
    def _label_codes(cls, value: dict[str, CapIn]) -> dict[str, CapIn]:
        # The codes campaigns' `labels` take (clarion.delivery.schemas.Label; WireModel checks
        # their text), said here rather than as pydantic's error on a dict key, which would
        # name the field by the offending code itself.
        for code in value:
            if not 1 <= len(code) <= MAX_LABEL_LENGTH:
                shown = repr(code[:20]) + ("…" if len(code) > 20 else "")
                got = f"{len(code)} characters ({shown})" if code else "an empty one"
                raise ValueError(
                    f"a label code has 1 to {MAX_LABEL_LENGTH} characters, as campaigns' "
                    f"labels; got {got}"
                )
        return value


class CapRead(BaseModel):
    max: int
    hours: int


class PushCapsRead(BaseModel):
    automations: CapRead | None
    labels: dict[str, CapRead]
