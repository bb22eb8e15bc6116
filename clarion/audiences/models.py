"""Custom audiences: named lists of ids (custom user ids, advertising ids or install ids).

An audience's members belong to a generation. A replace writes the new members as the next
generation and switches the audience to it in the same transaction, so targeting sees the old
members or the new ones, never a mix; the previous generation is then deleted.

Targeting reads the members resolved to installations (AudienceBitmap, kept by
clarion.audiences.resolved), not the ids themselves.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import BigInteger, ForeignKey, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime, utcnow


class AudienceKind(StrEnum):
    CUSTOM_IDS = "custom_ids"  # API 1.0
    ADVERTISING_IDS = "advertising_ids"  # API 1.0 (IDFA / GAID)
    INSTALL_IDS = "install_ids"  # API 1.1


class IndexingState(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    APPLIED = "APPLIED"
    REPLACED = "REPLACED"  # a later replace has superseded what this write did


class Audience(Base):
    __tablename__ = "audiences"
    __table_args__ = (UniqueConstraint("app_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(1024))
    generation: Mapped[int] = mapped_column(default=0)  # the members targeting sees
    nb_ids: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AudienceMember(Base):
    """The primary key serves targeting: (audience, generation, id) is one index probe per
    installation.

    No foreign key to audiences: PostgreSQL checks one row at a time, which triples the load of
    a 10-million-line file (98 s with the key, 33 s without). Members are only written and
    deleted through clarion.audiences, together with their audience."""

    __tablename__ = "audience_members"

    # The type of audiences.id, which it holds (as its migration created it).
    audience_id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    generation: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    # API 1.1: attributes and tags given with the member (kept, not yet targetable).
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    tags: Mapped[list[str] | None] = mapped_column(JsonValue)


class AudienceBitmap(Base):
    """A generation's members resolved to installations, 64 installations a row: bit b of `bits`
    is set when installation `block * 64 + b` is a member (by the id kind the audience holds).

    Targeting tests one bit of one of a few thousand rows per million installations, where
    joining a million member ids cost 3.3 times the query without the audience
    (docs/decisions/0016-audience-bitmaps.md). No foreign keys, as for members."""

    __tablename__ = "audience_bitmaps"

    audience_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    generation: Mapped[int] = mapped_column(primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    bits: Mapped[int] = mapped_column(BigInteger)  # a signed 64-bit word: bit 63 is the sign


class AudienceIndexing(Base):
    """One write (replace or update) and what became of it, for `?indexing_token=`."""

    __tablename__ = "audience_indexings"

    token: Mapped[str] = mapped_column(String(36), primary_key=True)
    audience_id: Mapped[int] = mapped_column(ForeignKey("audiences.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column()  # the generation the write applied to
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


AUDIENCE_MEMBERS = cast(Table, AudienceMember.__table__)
AUDIENCE_BITMAPS = cast(Table, AudienceBitmap.__table__)
