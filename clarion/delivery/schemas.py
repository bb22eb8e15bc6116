"""Push options on the wire, shared by the Transactional (spec §3.1) and Campaigns (§4.1) APIs.

Both APIs describe the push itself with the same fields and the same rules; each adds its own
recipients, messages and scheduling on top.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from clarion.formats import HTTPS_URL, Id, WireModel, json_object_text

MAX_TTL_SECONDS = 28 * 24 * 3600  # 2,419,200 s, spec §3.1

MAX_LABEL_LENGTH = 128
Label = Annotated[Id, Field(min_length=1, max_length=MAX_LABEL_LENGTH)]
"""A campaign label's code (spec §4.1 `labels`), which push caps name too (clarion.capping)."""


class Media(WireModel):
    icon: str | None = Field(default=None, pattern=HTTPS_URL, max_length=2048)
    picture: str | None = Field(default=None, pattern=HTTPS_URL, max_length=2048)
    audio: str | None = Field(default=None, pattern=HTTPS_URL, max_length=2048)
    video: str | None = Field(default=None, pattern=HTTPS_URL, max_length=2048)


class CollapseKey(WireModel):
    enabled: bool = False
    key: str = Field(default="default", min_length=1, max_length=64)


class PushOptions(WireModel):
    deeplink: str | None = Field(default=None, min_length=1, max_length=2048)
    custom_payload: str | None = None
    media: Media | None = None
    priority: Literal["normal", "high"] | None = None
    time_to_live: int | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)
    push_type: Literal["alert", "background"] = "alert"
    labels: list[Label] = Field(default_factory=list, max_length=3)

    @field_validator("custom_payload")
    @classmethod
    def _payload_is_object(cls, value: str | None) -> str | None:
        return None if value is None else json_object_text(value)
