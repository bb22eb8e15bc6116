"""Profiles: what the company's other systems know about a user (custom user id), per app.

One row per attribute and one per tag rather than a JSON document per user: targeting filters on
them (`c.attr`, `t.collection`) over millions of users, and plain B-tree indexes on
(app, name, value) serve those queries on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import cast

from sqlalchemy import Float, Index, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, UtcDateTime, utcnow


class AttributeKind(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    URL = "url"


class ProfileAttribute(Base):
    """`text_value` holds strings, URLs and dates (ISO 8601 UTC); `number_value` holds numbers,
    booleans (0/1) and dates again (Unix seconds), so that comparisons use an index."""

    __tablename__ = "profile_attributes"
    __table_args__ = (
        Index("ix_profile_attributes_text", "app_id", "name", "text_value"),
        Index("ix_profile_attributes_number", "app_id", "name", "number_value"),
    )

    app_id: Mapped[int] = mapped_column(primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    name: Mapped[str] = mapped_column(String(30), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    text_value: Mapped[str | None] = mapped_column(String(2048))
    number_value: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ProfileTag(Base):
    __tablename__ = "profile_tags"
    __table_args__ = (Index("ix_profile_tags_collection_tag", "app_id", "collection", "tag"),)

    app_id: Mapped[int] = mapped_column(primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    collection: Mapped[str] = mapped_column(String(30), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


# The tables themselves, for set-based Core statements (executemany deletes and upserts).
PROFILE_ATTRIBUTES = cast(Table, ProfileAttribute.__table__)
PROFILE_TAGS = cast(Table, ProfileTag.__table__)
