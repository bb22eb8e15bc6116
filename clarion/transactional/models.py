"""Transactional sends are Sends (clarion.delivery) with a group_id; what is stored for the
group_id itself is its statistics beyond the counted events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, UtcDateTime, utcnow


class GroupOpenDay(Base):
    """A transactional group_id's influenced opens of one UTC day: the installs that opened
    the app soon after one of its sends reached them (clarion.stats), stored as the
    campaigns' are (CampaignOpenDay): final once the day is over, provisional and replaced
    every minute while it is not."""

    __tablename__ = "group_open_days"

    app_id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # "YYYY-MM-DD", UTC
    influenced_open: Mapped[int] = mapped_column(default=0)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    final: Mapped[bool] = mapped_column(default=True)
