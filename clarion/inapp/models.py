"""In-app messages: campaigns shown inside the app by the SDK, and the themes they are drawn with.

An in-app campaign is not sent: the SDK asks for the campaigns due for its installation
(clarion.inapp.eligibility), keeps them, and shows one when its trigger fires (next
session, now, or an event), within its capping and grace period. The campaign keeps its API
body as accepted, updates merged in, as push campaigns do (GET answers with it). Reference:
docs/inapp.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime, utcnow


class InAppCampaign(Base):
    __tablename__ = "inapp_campaigns"
    __table_args__ = (
        Index("ix_inapp_campaigns_app_created", "app_id", "created_at"),
        # What an installation may be shown: the app's live campaigns not yet ended.
        Index("ix_inapp_campaigns_app_live", "app_id", "live", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    name: Mapped[str] = mapped_column(String(256))
    # Created with the Dev key: shown to dev installations only.
    dev_only: Mapped[bool] = mapped_column(default=False)
    from_api: Mapped[bool] = mapped_column(default=True)
    live: Mapped[bool] = mapped_column(default=False)
    # The create body as accepted, updates merged in (the wire format of GET).
    body: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    # When it may be shown, in UTC, loose for local dates (widened by the 14 h a time zone can
    # be ahead or behind): the fetch reads only campaigns whose window holds now, and checks
    # local dates exactly in the installation's zone. None: no start (now) or no end.
    window_start: Mapped[datetime | None] = mapped_column(UtcDateTime)
    window_end: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class InAppTheme(Base):
    """A named layout with its colours and fonts, referenced by code from `landing.theme`.

    The built-in modal theme `default` is not stored: every app has it (service.BUILT_IN)."""

    __tablename__ = "inapp_themes"
    __table_args__ = (UniqueConstraint("app_id", "code"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    # The theme as schemas.ThemeBody accepted it (layout, colours, fonts, close button).
    body: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class InAppRevision(Base):
    """Bumped in the transaction of every change to an app's in-app campaigns or themes.

    Each API process reads it about once a second to know whether the campaigns it holds in
    memory are stale: a change reaches installations within a few seconds, at the cost of one
    indexed read per app per second rather than one per fetch."""

    __tablename__ = "inapp_revisions"

    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class InAppSupply(Base):
    """Which installation was handed which campaign (and version): `inapp_supplied` is counted
    once per installation and campaign, the first time it is handed out, however often the SDK
    asks again."""

    __tablename__ = "inapp_supplies"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("inapp_campaigns.id"), primary_key=True)
    installation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    version: Mapped[str] = mapped_column(String(8), default="")
    supplied_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
