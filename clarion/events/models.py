"""The event log: push events, in-app events and events tracked by the SDK.

Exports and statistics read these by app and UTC day, hence the (app_id, occurred_at) indexes.
Identity columns are copied onto each row (not joined) so that a row stays true after the
installation changes or is deleted, as an export of that day must.

On PostgreSQL push_events and inapp_events are partitioned by UTC day of `occurred_at`, and
their primary key is (id, occurred_at) as a partitioned table's must be; ids come from one
sequence per table, so `id` alone still names one row (the mapping's key). Their expired days
are dropped (clarion.retention, docs/retention.md); tracked_events, and SQLite's tables, are
plain and lose their expired rows by bounded DELETEs.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, String, false, text
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime

# The tracked event an SDK app open is stored as; SDK event names cannot start with "_".
APP_OPEN_EVENT = "_open"


class PushEventKind(StrEnum):
    OPTIN = "push_optin"
    OPTOUT = "push_optout"
    SENT = "push_sent"
    OPENED = "push_opened"
    ERROR = "push_error"
    TOKEN_DELETED = "token_deleted"


class InAppEventKind(StrEnum):
    SUPPLIED = "inapp_supplied"
    SHOWN = "inapp_shown"
    CLICKED = "inapp_clicked"
    CLOSED = "inapp_closed"


class PushEvent(Base):
    __tablename__ = "push_events"
    __table_args__ = (
        Index("ix_push_events_app_time", "app_id", "occurred_at"),
        Index("ix_push_events_send_token", "send_token"),
        # A campaign's last errors in time order, its opens and sends of a day for its
        # statistics, its Export API events. Partial: every such query names the token, and
        # transactional rows (no token) would be a third of a day's 3.6 GB (decision 0046).
        Index(
            "ix_push_events_of_campaigns",
            "campaign_token",
            "kind",
            "occurred_at",
            postgresql_where=text("campaign_token IS NOT NULL"),
            sqlite_where=text("campaign_token IS NOT NULL"),
        ),
        # Events of a group_id (partial): its last errors, in time order.
        Index(
            "ix_push_events_group_kind",
            "app_id",
            "group_id",
            "kind",
            "occurred_at",
            postgresql_where=text("group_id IS NOT NULL"),
            sqlite_where=text("group_id IS NOT NULL"),
        ),
        # A user's pushes (the dashboard's user lookup), an install's sends and opens
        # (statistics): always by equality, so a hash on PostgreSQL, ~25 bytes an event
        # against 87 for the btree (app_id, install_id, occurred_at) (decision 0046).
        Index("ix_push_events_install", "install_id", postgresql_using="hash"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column()
    kind: Mapped[str] = mapped_column(String(20))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    platform: Mapped[str] = mapped_column(String(10))
    install_id: Mapped[str | None] = mapped_column(String(128))
    custom_id: Mapped[str | None] = mapped_column(String(512))
    advertising_id: Mapped[str | None] = mapped_column(String(64))
    push_token: Mapped[str | None] = mapped_column(String(1024))
    # The send (`com.batch.i`): the transactional token, or a campaign send (one per A/B version).
    send_token: Mapped[str | None] = mapped_column(String(64))
    group_id: Mapped[str | None] = mapped_column(String(128))
    campaign_token: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(1024))  # provider's reason, verbatim
    # Sent again after an unknown outcome (a timeout, a worker that died mid-send): the device
    # may have received it twice. Counted, never hidden (docs/delivery.md).
    resent: Mapped[bool] = mapped_column(default=False, server_default=false())


# The kinds of push events that statistics count (PushEventCount).
COUNTED_KINDS = frozenset(
    {PushEventKind.SENT, PushEventKind.OPENED, PushEventKind.ERROR, PushEventKind.TOKEN_DELETED}
)
# Not a kind of event: the count, among a key's `push_sent` events, of those marked `resent`
# (sent again after an unknown outcome), kept beside the kinds in PushEventCount so that
# statistics read it as they read `sent`, without scanning the log (docs/delivery.md).
RESENT_COUNT = "push_resent"


class PushEventCount(Base):
    """Push events of campaigns and of transactional group_ids counted by UTC day (and, for a
    campaign, by send: its A/B version) and kind (and RESENT_COUNT, the re-sent among the
    `push_sent`), written in the transaction that writes the events: statistics read these few
    rows, not the millions of events they stand for.

    Append-only, so that concurrent writers never wait on one hot counter row: each batch of
    events adds its rows (`folded` false), and fold_event_counts later replaces a campaign's or
    group's rows by one per key holding their sum. "" stands for no campaign, group or send."""

    __tablename__ = "push_event_counts"
    __table_args__ = (
        Index("ix_push_event_counts_campaign", "campaign_token", "day"),
        Index(
            "ix_push_event_counts_group",
            "app_id",
            "day",
            "group_id",
            postgresql_where=text("group_id <> ''"),
            sqlite_where=text("group_id <> ''"),
        ),
        Index("ix_push_event_counts_day", "day"),
        Index(
            "ix_push_event_counts_unfolded",
            "campaign_token",
            "group_id",
            postgresql_where=text("NOT folded"),
            sqlite_where=text("NOT folded"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column()
    day: Mapped[str] = mapped_column(String(10))  # "YYYY-MM-DD", UTC
    campaign_token: Mapped[str] = mapped_column(String(64))
    group_id: Mapped[str] = mapped_column(String(128))
    send_token: Mapped[str] = mapped_column(String(64))  # campaigns' only
    kind: Mapped[str] = mapped_column(String(20))
    count: Mapped[int] = mapped_column()
    folded: Mapped[bool] = mapped_column(default=False)


class InAppEvent(Base):
    __tablename__ = "inapp_events"
    __table_args__ = (
        Index("ix_inapp_events_app_time", "app_id", "occurred_at"),
        # A campaign's statistics (clarion.inapp) read its events only.
        Index("ix_inapp_events_campaign_time", "campaign_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column()
    kind: Mapped[str] = mapped_column(String(20))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    platform: Mapped[str] = mapped_column(String(10))
    install_id: Mapped[str | None] = mapped_column(String(128))
    custom_id: Mapped[str | None] = mapped_column(String(512))
    advertising_id: Mapped[str | None] = mapped_column(String(64))
    campaign_id: Mapped[str] = mapped_column(String(64))  # export's event_var_1
    cta_position: Mapped[int | None] = mapped_column()  # event_var_2
    cta_label: Mapped[str | None] = mapped_column(String(255))  # event_var_3
    # The A/B version the installation was handed ("" without A/B testing).
    version: Mapped[str] = mapped_column(String(8), default="", server_default="")


class TrackedEvent(Base):
    """A custom event tracked by the SDK (or, later, by the Trigger Events API)."""

    __tablename__ = "tracked_events"
    __table_args__ = (
        Index("ix_tracked_events_app_time", "app_id", "occurred_at"),
        Index("ix_tracked_events_app_install", "app_id", "install_id"),
        # Targeting's `e.` (SDK events, by installation) and `ue.` (server events, by custom
        # user id) queries: $count, $first and $last read these indexes only.
        Index("ix_tracked_events_app_name_install", "app_id", "name", "install_id", "occurred_at"),
        Index("ix_tracked_events_app_name_custom", "app_id", "name", "custom_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column()
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    install_id: Mapped[str | None] = mapped_column(String(128))
    custom_id: Mapped[str | None] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JsonValue)
    tags: Mapped[list[str] | None] = mapped_column(JsonValue)
