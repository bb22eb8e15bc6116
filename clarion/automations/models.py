"""Automations: a push campaign with a `trigger` (clarion.campaigns stores the campaign itself)
sends to each user whose event enters them, after a delay, unless a cancel event comes first.

Each entry is a durable row: written in the transaction that stores its event, cancelled in the
one that stores a cancel event, and moved to sent in the transaction that writes its push into
the delivery outbox, so a crash between "due" and "sent" loses nothing and sends once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import BigInteger, Index, String, Table, text
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime


class EntryState(StrEnum):
    PENDING = "pending"  # waiting for due_at (or for the end of quiet hours)
    SENT = "sent"  # written into the delivery outbox (send_id)
    CANCELLED = "cancelled"  # a cancel event came first, or the automation was paused
    SKIPPED = "skipped"  # due, but not sent: `reason` says why (audience, cap, unreachable)


class AutomationEntry(Base):
    __tablename__ = "automation_entries"
    __table_args__ = (
        # The dispatcher's claim: due pending entries, oldest first. Partial, so that the
        # millions of finished entries cost it nothing.
        Index(
            "ix_automation_entries_due",
            "due_at",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
        # Cancel events and the once-per-N-days rule look up one user's entries of one
        # automation: server events by custom user id, SDK events by installation id. Partial:
        # an entry of a server event (no installation) is not written into the installation
        # index, at entry nor at each state change (cancelled, sent: not HOT updates, every
        # index takes the new version). Measured on 2,500 entries: 1.4 us an entry of 10.6.
        Index(
            "ix_automation_entries_custom",
            "campaign_id",
            "custom_id",
            "entered_at",
            postgresql_where=text("custom_id IS NOT NULL"),
            sqlite_where=text("custom_id IS NOT NULL"),
        ),
        Index(
            "ix_automation_entries_install",
            "campaign_id",
            "install_id",
            "entered_at",
            postgresql_where=text("install_id IS NOT NULL"),
            sqlite_where=text("install_id IS NOT NULL"),
        ),
        # Statistics (clarion.stats.automations): an automation's entries of a state finished
        # since a date, with why, read from the index alone; and its pending ones (pausing).
        Index("ix_automation_entries_finished", "campaign_id", "state", "finished_at", "reason"),
        # The dashboard's pages of an automation's newest entries (keyset on id): without it, a
        # quiet automation's page walks the newer entries of all the others.
        Index("ix_automation_entries_newest", "campaign_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column()
    # No foreign key (decision 0038): its check is a lookup and a share lock on the campaign per
    # entry written (3 us of an entry's 10.6 us in PostgreSQL), and campaigns are never deleted
    # (deleted_at), so it could never refuse an entry written for a campaign the catalogue read.
    campaign_id: Mapped[int] = mapped_column(BigIntPK)
    # Who entered: a server event (`ue.`) names a custom user id, an SDK event an installation
    # (and the custom id it carried, if any).
    custom_id: Mapped[str | None] = mapped_column(String(512))
    install_id: Mapped[str | None] = mapped_column(String(128))
    # The trigger event ({"name", "label", "attributes", "tags"}): the message's `event.` values
    # and what a cancel event's match_attribute is compared with.
    event: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    entered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    due_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Whether due_at already accounts for the trigger's at_local_time in the user's zone (set
    # by the dispatcher the first time the entry is due, when it knows the user's installation).
    timed: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(10), default=EntryState.PENDING.value)
    # Why cancelled or skipped: the cancel event's name, "paused", "audience", "cap:<key>",
    # "unreachable".
    reason: Mapped[str | None] = mapped_column(String(160))
    # Sent: the send that carried it (its A/B version is the send's) and when.
    send_id: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


ENTRIES = cast(Table, AutomationEntry.__table__)
