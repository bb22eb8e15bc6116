"""Daily flat-file exports: where each app's files go (destinations), and each day produced
(runs). The file format is docs/exports.md."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, Date, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime, utcnow


class ExportKind(StrEnum):
    PUSH_EVENTS = "push_events"
    INAPP_EVENTS = "inapp_events"
    OPTIN_USERS = "optin_users"


class ExportStatus(StrEnum):
    PENDING = "pending"  # due, not started yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # tried again at next_attempt_at


ID_COLUMNS = ("install_id", "custom_id", "advertising_id")


class ExportDestination(Base):
    __tablename__ = "export_destinations"
    __table_args__ = (UniqueConstraint("app_id", "name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(2048))  # never holds a password
    credentials: Mapped[str | None] = mapped_column(Text)  # Fernet-encrypted JSON
    file_name: Mapped[str] = mapped_column(String(255))
    gzip: Mapped[bool] = mapped_column(Boolean, default=False)
    id_columns: Mapped[list[str]] = mapped_column(JsonValue)
    delay_minutes: Mapped[int] = mapped_column(default=120)
    first_day: Mapped[date] = mapped_column(Date)  # nothing before is exported unless asked
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ExportRun(Base):
    """One (destination, day): produced once, or failing and due again at next_attempt_at."""

    __tablename__ = "export_runs"
    __table_args__ = (
        UniqueConstraint("destination_id", "day"),
        Index("ix_export_runs_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    destination_id: Mapped[int] = mapped_column(
        ForeignKey("export_destinations.id", ondelete="CASCADE")
    )
    day: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default=ExportStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The process producing the file now, until when (a crashed one's lease runs out).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    rows: Mapped[int | None] = mapped_column()
    bytes: Mapped[int | None] = mapped_column()
    path: Mapped[str | None] = mapped_column(String(2048))
    error: Mapped[str | None] = mapped_column(String(1024))
    history: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonValue)  # past attempts
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class RequestStatus(StrEnum):
    """Export API 1.0 (spec §11.1)."""

    CREATED = "CREATED"
    PENDING = "PENDING"
    ERROR = "ERROR"
    SUCCESS = "SUCCESS"
    EXPIRED = "EXPIRED"  # the file lives a month


class RequestKind(StrEnum):
    CAMPAIGN_IDS = "campaign_ids"  # export/campaign/{token}/ids
    CAMPAIGN_EVENTS = "campaign_events"  # export/campaign/{token}/events
    INAPP_CAMPAIGN_EVENTS = "inapp_campaign_events"  # export/inapp-campaign/{id}/events


class ExportRequest(Base):
    """An on-demand export (Export API 1.0): created by a call, produced by a worker."""

    __tablename__ = "export_requests"
    __table_args__ = (Index("ix_export_requests_status", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64))  # the campaign token or in-app campaign id
    uri: Mapped[str] = mapped_column(String(512))
    date_from: Mapped[datetime] = mapped_column(UtcDateTime)
    date_to: Mapped[datetime] = mapped_column(UtcDateTime)
    request: Mapped[dict[str, Any]] = mapped_column(JsonValue)  # as given, for the status
    events: Mapped[list[str]] = mapped_column(JsonValue)
    ids: Mapped[list[str]] = mapped_column(JsonValue)
    status: Mapped[str] = mapped_column(String(8), default=RequestStatus.CREATED.value)
    file_name: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
