"""Transactional API 1.1 wire format (spec §3), field for field.

Unknown fields are ignored rather than refused: Batch clients send fields Clarion does not use
(`wp_template`, `skip_media_check`), and an integration must work by changing only its host.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from clarion.campaigns.schemas import PushLanding, landing_beside
from clarion.delivery.schemas import CollapseKey, PushOptions
from clarion.formats import INTEGERS_TOO, NUMBER_AS_TEXT, Id, WireModel

MAX_RECIPIENTS = 10_000
# The kinds of recipient, in the order a send's batches take them.
RECIPIENT_KINDS = ("custom_ids", "install_ids", "advertising_ids", "tokens")
Recipient = Annotated[Id, Field(min_length=1, max_length=1024)]
GroupId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,128}$"), NUMBER_AS_TEXT, INTEGERS_TOO]


class Recipients(WireModel):
    tokens: list[Recipient] = Field(default_factory=list)
    custom_ids: list[Recipient] = Field(default_factory=list)
    install_ids: list[Recipient] = Field(default_factory=list)
    # Batch's partner page lists advertising ids (IDFA/GAID) among the Transactional API's
    # targets (seed 000): each reaches the installations that reported it (SDK API).
    advertising_ids: list[Recipient] = Field(default_factory=list)

    @model_validator(mode="after")
    def _count(self) -> Recipients:
        total = sum(len(getattr(self, kind)) for kind in RECIPIENT_KINDS)
        if total == 0:
            raise ValueError("give at least one of " + ", ".join(RECIPIENT_KINDS))
        if total > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS:,} recipients in total, got {total:,}")
        return self


class Message(WireModel):
    title: str | None = Field(default=None, max_length=256)
    body: str = Field(max_length=4096)


class TransactionalSend(PushOptions):
    model_config = ConfigDict(extra="ignore")

    # Required, except with a template, whose token then stands in for it.
    group_id: GroupId | None = None
    recipients: Recipients
    # Partners Transactional API: the token of a saved campaign whose content is sent; any
    # content field given here overrides the campaign's (seed 000, spec §3.4).
    template_id: Annotated[Id, Field(min_length=1, max_length=64)] | None = None
    message: Message | None = None
    messages: dict[str, Message] | None = None
    gcm_collapse_key: CollapseKey | None = None
    sandbox: bool = False
    landing: PushLanding | None = None

    @field_validator("landing")
    @classmethod
    def _landing(cls, value: PushLanding | None, info: ValidationInfo) -> PushLanding | None:
        return landing_beside(value, info)

    @field_validator("messages")
    @classmethod
    def _languages(cls, value: dict[str, Message] | None) -> dict[str, Message] | None:
        if value is not None:
            if not value:
                raise ValueError("must hold at least one language")
            for lang in value:
                if lang != "default" and not (2 <= len(lang) <= 3 and lang.isalpha()):
                    raise ValueError(f"{lang!r} is not a language code (or 'default')")
        return value

    @model_validator(mode="after")
    def _content(self) -> TransactionalSend:
        if self.message is not None and self.messages is not None:
            raise ValueError("message and messages are mutually exclusive")
        if self.push_type == "background" and self.media is not None:
            raise ValueError("a background push carries no media")
        if self.template_id is not None:
            return self  # the template supplies the rest
        if self.group_id is None:
            raise PydanticCustomError(
                "missing_field", "group_id is required", {"field": "group_id"}
            )
        if self.push_type != "background" and self.message is None and self.messages is None:
            # Reported as MISSING_PARAMETER (code 30), like any absent required field.
            raise PydanticCustomError("missing_field", "message is required", {"field": "message"})
        return self

    def template_fields(self) -> list[tuple[str, str | None]]:
        """The texts that may be templates, with their paths in the body (for errors)."""
        fields: list[tuple[str, str | None]] = [("deeplink", self.deeplink)]
        named = {"message": self.message} if self.message is not None else {}
        named |= {f"messages.{lang}": message for lang, message in (self.messages or {}).items()}
        for path, message in named.items():
            fields += [(f"{path}.title", message.title), (f"{path}.body", message.body)]
        return fields


class TransactionalAccepted(BaseModel):
    token: str


class SendError(BaseModel):
    kind: str
    install_id: str | None
    push_token: str | None
    reason: str | None
    occurred_at: datetime


class SendRead(BaseModel):
    """Clarion's debugging view of one transactional call (Batch's dashboard debug tool)."""

    token: str
    group_id: str | None
    created_at: datetime
    expires_at: datetime | None
    targeted: int
    sent: int
    # Of `sent`, those sent again after an unknown outcome (docs/delivery.md#counting-re-sends).
    resent: int
    failed: int
    tokens_deleted: int
    pending_batches: int
    last_errors: list[SendError]
