"""Tenancy: a company owns the REST key and its apps; an app is one platform of one product."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime, utcnow


class Company(Base):
    __tablename__ = "companies"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    rest_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class App(Base):
    __tablename__ = "apps"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(10))  # ios | android | web
    live_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    dev_key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Time zone for installs that never told theirs (local-time campaigns).
    default_timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Provider credentials, each a Fernet token of its JSON (clarion.security.SecretBox).
    apns_credentials: Mapped[str | None] = mapped_column(Text)
    fcm_credentials: Mapped[str | None] = mapped_column(Text)
    webpush_credentials: Mapped[str | None] = mapped_column(Text)
    # The VAPID applicationServerKey is public by design: web pages subscribe with it.
    vapid_public_key: Mapped[str | None] = mapped_column(String(100))
    # The web pages that may call the SDK API with this app's key (docs/web-sdk.md): origins
    # as browsers write them, `https://shop.example`; at most 50 (schemas.AllowedOriginsIn).
    allowed_origins: Mapped[list[str]] = mapped_column(
        JsonValue, default=list, server_default=text("'[]'")
    )
    # Push caps (clarion.capping, docs/campaigns.md): {"automations": {"max", "hours"},
    # "labels": {code: {"max", "hours"}}}; {} caps nothing.
    push_caps: Mapped[dict[str, Any]] = mapped_column(
        JsonValue, default=dict, server_default=text("'{}'")
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
