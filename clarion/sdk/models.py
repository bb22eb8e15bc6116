"""Installations: one app on one device, with its push token and what the SDK told us."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, UtcDateTime, utcnow


class Installation(Base):
    __tablename__ = "installations"
    __table_args__ = (
        UniqueConstraint("app_id", "install_id"),
        # A token belongs to one installation at a time; re-registering moves it.
        UniqueConstraint("app_id", "push_token"),
        Index("ix_installations_app_custom_id", "app_id", "custom_id"),
        Index("ix_installations_app_advertising_id", "app_id", "advertising_id"),
        # Campaign fan-out pages through an app's installations in id order; local-time waves
        # do so within time zones.
        Index("ix_installations_app_id", "app_id", "id"),
        Index("ix_installations_app_timezone", "app_id", "timezone", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    install_id: Mapped[str] = mapped_column(String(128))
    # Registered through the Dev key: a debug build, reached only by Dev-key sends (spec §1.3).
    is_dev: Mapped[bool] = mapped_column(default=False)
    # APNs device token, FCM registration token, or the Web Push subscription endpoint.
    push_token: Mapped[str | None] = mapped_column(String(1024))
    webpush_p256dh: Mapped[str | None] = mapped_column(String(200))
    webpush_auth: Mapped[str | None] = mapped_column(String(100))
    custom_id: Mapped[str | None] = mapped_column(String(512))
    advertising_id: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(16))
    region: Mapped[str | None] = mapped_column(String(8))
    timezone: Mapped[str | None] = mapped_column(String(64))
    app_version: Mapped[str | None] = mapped_column(String(64))
    os_version: Mapped[str | None] = mapped_column(String(64))
    device_model: Mapped[str | None] = mapped_column(String(128))
    push_optin: Mapped[bool] = mapped_column(default=False)
    optin_changed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
