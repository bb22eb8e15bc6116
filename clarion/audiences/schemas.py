"""Custom Audience API wire format (spec §8): 1.0 takes custom or advertising ids, 1.1 install
ids with optional attributes and tags per member. A call carries at most 10,000 ids."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clarion.audiences.models import AudienceKind
from clarion.formats import Id, WireModel

MAX_IDS_PER_CALL = 10_000

MemberId = Annotated[Id, Field(min_length=1, max_length=512)]
Tag = Annotated[Id, Field(min_length=1, max_length=64)]


class ReplaceV10(WireModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["custom_ids", "advertising_ids"]
    description: str | None = Field(default=None, max_length=1024)
    ids: list[MemberId] = Field(max_length=MAX_IDS_PER_CALL)

    @property
    def kind(self) -> AudienceKind:
        return AudienceKind(self.type)

    def members(self) -> list[tuple[str, dict[str, Any] | None, list[str] | None]]:
        return [(member, None, None) for member in self.ids]


class ChangeV10(WireModel):
    action: Literal["add", "remove"]
    id: MemberId


class UpdateV10(WireModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["custom_ids", "advertising_ids"]
    ids: list[ChangeV10] = Field(max_length=MAX_IDS_PER_CALL)

    @property
    def kind(self) -> AudienceKind:
        return AudienceKind(self.type)

    def changes(self) -> list[tuple[str, str, dict[str, Any] | None, list[str] | None]]:
        return [(change.action, change.id, None, None) for change in self.ids]


class MemberV11(WireModel):
    model_config = ConfigDict(extra="forbid")

    id: MemberId
    attributes: dict[str, Any] | None = Field(default=None, max_length=50)
    tags: list[Tag] | None = Field(default=None, max_length=25)


class ReplaceV11(WireModel):
    model_config = ConfigDict(extra="ignore")

    description: str | None = Field(default=None, max_length=1024)
    ids: list[MemberV11] = Field(max_length=MAX_IDS_PER_CALL)

    @property
    def kind(self) -> AudienceKind:
        return AudienceKind.INSTALL_IDS

    def members(self) -> list[tuple[str, dict[str, Any] | None, list[str] | None]]:
        return [(member.id, member.attributes, member.tags) for member in self.ids]


class ChangeV11(MemberV11):
    action: Literal["add", "remove"]


class UpdateV11(WireModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[ChangeV11] = Field(max_length=MAX_IDS_PER_CALL)

    @property
    def kind(self) -> AudienceKind:
        return AudienceKind.INSTALL_IDS

    def changes(self) -> list[tuple[str, str, dict[str, Any] | None, list[str] | None]]:
        return [(c.action, c.id, c.attributes, c.tags) for c in self.ids]


class IndexingAccepted(BaseModel):
    indexing_token: str


class AudienceRead(BaseModel):
    name: str
    type: str
    description: str | None
    nb_ids: int
    created: str
    updated: str
    # With ?indexing_token=: what became of that write (APPLIED, or REPLACED by a later one).
    indexing_state: str | None = None


class AudienceList(BaseModel):
    custom_audiences: list[AudienceRead]
