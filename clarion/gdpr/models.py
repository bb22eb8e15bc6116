"""GDPR requests (review or remove one user's data), and the ids a removal blocks for a month."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, UtcDateTime, utcnow


class RequestType(StrEnum):
    REVIEW = "review"
    REMOVE = "remove"


class RequestStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"


class GdprRequest(Base):
    __tablename__ = "gdpr_requests"
    __table_args__ = (
        Index("ix_gdpr_requests_app_created", "app_id", "created_at"),
        Index("ix_gdpr_requests_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the request_id
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    request_type: Mapped[str] = mapped_column(String(8))
    id_type: Mapped[str] = mapped_column(String(16))
    id_value: Mapped[str] = mapped_column(String(512))
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(8), default=RequestStatus.PENDING.value)
    error: Mapped[str | None] = mapped_column(String(256))
    # Reviews: the archive's file name under the var directory, once written.
    archive: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class BlockedId(Base):
    """An id removed by a GDPR request: data arriving for it is ignored until `until`."""

    __tablename__ = "gdpr_blocked_ids"

    app_id: Mapped[int] = mapped_column(primary_key=True)
    id_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    id_value: Mapped[str] = mapped_column(String(512), primary_key=True)
    until: Mapped[datetime] = mapped_column(UtcDateTime)
