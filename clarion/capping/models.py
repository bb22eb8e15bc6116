"""Capping: how many pushes one installation may get in a period, across all automations
(the app's global cap) and per campaign label (Batch's labels exist for this), for automations
and scheduled campaigns alike.

The caps themselves are app settings (`apps.push_caps`); each push that counts against a cap
leaves a receipt, written in the transaction that writes the push into the delivery outbox.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import BigInteger, Index, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, UtcDateTime

# The key a push of any automation counts under (the global cap); a label's is "label:<code>".
AUTOMATIONS_KEY = "automations"

# The longest period a cap may have: 30 days, as the longest automation delay. Receipts older
# than that count against no cap and are purged (clarion.capping.tasks).
MAX_CAP_HOURS = 30 * 24


class CappingReceipt(Base):
    __tablename__ = "capping_receipts"
    __table_args__ = (
        # "How many under this key since then" for a page of installations.
        Index("ix_capping_receipts_lookup", "app_id", "key", "installation_id", "sent_at"),
        # Receipts older than the longest cap are purged by time.
        Index("ix_capping_receipts_sent_at", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    app_id: Mapped[int] = mapped_column()
    installation_id: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(140))
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime)


RECEIPTS = cast(Table, CappingReceipt.__table__)
