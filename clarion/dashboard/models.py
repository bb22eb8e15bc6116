"""Dashboard accounts: the people of a company who sign in to the web UI, and their sessions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, UtcDateTime, utcnow


class Role(StrEnum):
    # Everything, including API keys, provider credentials and the team's accounts.
    ADMIN = "admin"
    # Campaigns, audiences, imports and exports; no keys, no credentials.
    EDITOR = "editor"
    # Reads everything an editor sees and changes nothing.
    VIEWER = "viewer"


class DashboardUser(Base):
    __tablename__ = "dashboard_users"
    __table_args__ = (UniqueConstraint("email"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id"), index=True)
    # Stored lower-case: the sign-in name, unique across the installation.
    email: Mapped[str] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String(200), default="")
    # Argon2id, in the PHC string format argon2-cffi writes (salt and parameters included).
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(10))
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_sign_in_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class DashboardSession(Base):
    """A signed-in browser. The cookie carries a random token; only its SHA-256 is stored, so a
    copy of the database cannot be replayed as a session."""

    __tablename__ = "dashboard_sessions"
    __table_args__ = (Index("ix_dashboard_sessions_expires_at", "expires_at"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("dashboard_users.id", ondelete="CASCADE"))
    # The synchronizer token every form and script of this session sends back (CSRF).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SignInFailure(Base):
    """A failed sign-in for an e-mail (known or not) from a client address, kept for the
    throttle's window (clarion.dashboard.service). In the database rather than in memory so that
    every `clarion serve` process counts the same tries."""

    __tablename__ = "dashboard_sign_in_failures"
    # Both counts read one client's failures in the window: at most SIGN_IN_CLIENT_LIMIT rows,
    # since no failure is recorded past it, found through (client, failed_at).
    __table_args__ = (
        Index("ix_dashboard_sign_in_failures_client_at", "client", "failed_at"),
        Index("ix_dashboard_sign_in_failures_at", "failed_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    # The client's address as the throttle counts it: an IPv4 address, or an IPv6 /64 network
    # (service.client_address).
    client: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[datetime] = mapped_column(UtcDateTime)
