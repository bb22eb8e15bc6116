"""Campaigns: a push to a targeted segment, scheduled once, in local time or recurring; or an
automation, sent to each user whose event triggers it (clarion.automations).

A campaign keeps its API body as accepted (merged across updates): `GET campaigns/{token}`
answers with it, and each run reads its content and targeting from it. Every occurrence is a
CampaignRun; a run streams its audience into the delivery outbox (clarion.delivery) through
one Send per A/B version, remembering how far it got so that a restarted process goes on
where the last one stopped, without sending to anyone twice.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime, utcnow


class CampaignState(StrEnum):
    DRAFT = "draft"  # live: false, never started
    SCHEDULED = "scheduled"  # live, waiting for next_run_at
    RUNNING = "running"  # a run is fanning out or its batches are being delivered
    COMPLETED = "completed"  # every occurrence delivered
    STOPPED = "stopped"  # set to live: false (or deleted) after it had started
    FAILED = "failed"  # a run failed for a reason no retry can fix (its run's `failure` says)
    # Automations (a `trigger` in the body) are never scheduled: live, they are active (events
    # enter users, clarion.automations sends); set to live: false, paused (pending entries are
    # cancelled, new events enter no one) until set live again.
    ACTIVE = "active"
    PAUSED = "paused"


class RunState(StrEnum):
    FANNING_OUT = "fanning_out"  # writing the audience into delivery batches
    DELIVERING = "delivering"  # every batch written; waiting for them to be delivered
    DONE = "done"
    STOPPED = "stopped"
    EXPIRED = "expired"  # due while Clarion was down, and past its time to live when it came back
    FAILED = "failed"  # could not be sent, for the reason in `failure` (a retry would fail too)


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (
        Index("ix_campaigns_state_next_run_at", "state", "next_run_at"),
        Index("ix_campaigns_app_created", "app_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    token: Mapped[str] = mapped_column(String(32), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"))
    name: Mapped[str] = mapped_column(String(256))
    # Created with the Dev key: reaches dev installations only.
    dev_only: Mapped[bool] = mapped_column(default=False)
    from_api: Mapped[bool] = mapped_column(default=True)
    state: Mapped[str] = mapped_column(String(10))
    # The create body as accepted, updates merged in (the wire format of GET).
    body: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    # The occurrence to run next (numbered from 0) and when it is due; next_run_at is None
    # when nothing more is due (or the campaign is a draft or stopped).
    next_occurrence: Mapped[int] = mapped_column(default=0)
    next_run_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class CampaignRun(Base):
    __tablename__ = "campaign_runs"
    # One row per occurrence: a second scheduler racing for the same occurrence fails here.
    __table_args__ = (
        UniqueConstraint("campaign_id", "occurrence"),
        Index("ix_campaign_runs_state", "state"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    occurrence: Mapped[int] = mapped_column()  # numbered from 0
    scheduled_for: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(12))
    # The campaign body when the run started: an update made while it runs (new targeting,
    # A/B versions, capping) applies to the next occurrence, not halfway through this one.
    body: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    # Keyset position of the fan-out: the last installation id written into a batch (0 at
    # the start of each local-time wave).
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    # Pages written so far. Only ever grows: a page is written only if this is still what the
    # writer read, which the cursor alone cannot promise once waves reset it.
    pages: Mapped[int] = mapped_column(default=0)
    # The process fanning out (its scheduler's id) holds the run until lease_until; a dead
    # one's run is taken over, and a process that lost its lease can no longer write.
    lease_owner: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    targeted: Mapped[int] = mapped_column(default=0)
    # Local-time runs go out in waves, one per group of time zones whose wall clock has
    # reached the campaign's time: the zones of the wave being written, and those done.
    wave: Mapped[list[str] | None] = mapped_column(JsonValue)
    zones_done: Mapped[list[str] | None] = mapped_column(JsonValue)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Why a failed run failed, as an API error message (e.g. a targeting stored before a limit).
    failure: Mapped[str | None] = mapped_column(String(1024))


class CampaignReceipt(Base):
    """How many occurrences of a capped recurring campaign each installation was sent."""

    __tablename__ = "campaign_receipts"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    installation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(default=0)


class CampaignOpenDay(Base):
    """A campaign's influenced opens and re-engaged installs of one UTC day, per A/B version
    ("" for none), as matching a big campaign's sends with the app's opens takes too long for
    every read (clarion.stats). Final once the day is over; provisional, and replaced every
    minute, while it is not. A day with nothing found still has a row ("" with zeros)."""

    __tablename__ = "campaign_open_days"

    campaign_token: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # "YYYY-MM-DD", UTC
    version: Mapped[str] = mapped_column(String(8), primary_key=True)
    influenced_open: Mapped[int] = mapped_column(default=0)
    reengaged: Mapped[int] = mapped_column(default=0)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    final: Mapped[bool] = mapped_column(default=True)
