"""The durable outbox: a send (what to say, to whom) and its delivery batches.

A send and all its batches are committed before anything is delivered. A batch holds up to
CLARION_BATCH_SIZE recipients and moves pending -> sending (leased by one worker, which renews
the lease and records outcomes as they come) -> done; a worker that dies leaves a lease that
expires, and the batch is claimed again for the recipients without an outcome; a worker that
stops hands it back (pending). See docs/decisions/0032-leases-and-progress.md. Transient failures
become a new pending batch with a later `not_before`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Table, false
from sqlalchemy.orm import Mapped, mapped_column

from clarion.db import Base, BigIntPK, JsonValue, UtcDateTime, utcnow


class SendKind(StrEnum):
    TRANSACTIONAL = "transactional"
    CAMPAIGN = "campaign"
    # A pass of an automation's dispatcher (clarion.automations.tasks): one send per version.
    AUTOMATION = "automation"


class BatchStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"


class Send(Base):
    __tablename__ = "sends"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    # The transactional token (a UUID) returned to the caller; `com.batch.i` in every payload.
    token: Mapped[str] = mapped_column(String(64), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    group_id: Mapped[str | None] = mapped_column(String(128))
    campaign_token: Mapped[str | None] = mapped_column(String(64))
    # Campaign sends: the run (occurrence) they belong to and their A/B version.
    run_id: Mapped[int | None] = mapped_column(ForeignKey("campaign_runs.id"), index=True)
    version: Mapped[str | None] = mapped_column(String(8))
    # Set when the send is stopped (a campaign stopped mid-send): its batches are not sent.
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Sent with the Dev key: reaches dev installs only.
    dev_only: Mapped[bool] = mapped_column(default=False)
    # Raw APNs tokens go through the sandbox environment (transactional `sandbox`).
    sandbox: Mapped[bool] = mapped_column(default=False)
    # The message as validated at the API: message/messages, deeplink, media, priority, ...
    content: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # No delivery (first try or retry) is attempted after this (time_to_live).
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A send's progress is the sum of its batches' counters (see DeliveryBatch).


class DeliveryBatch(Base):
    __tablename__ = "delivery_batches"
    __table_args__ = (Index("ix_delivery_batches_status_not_before", "status", "not_before"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    send_id: Mapped[int] = mapped_column(ForeignKey("sends.id"), index=True)
    status: Mapped[str] = mapped_column(String(10), default=BatchStatus.PENDING.value)
    attempt: Mapped[int] = mapped_column(default=0)
    not_before: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_enqueued_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Who to reach, as given ({"custom_ids": [...], "install_ids": [...], "advertising_ids":
    # [...], "tokens": [...]}) or, for retries, as resolved ({"installations": [pk, ...],
    # "tokens": [...]}). An automation's adds {"events": {"<pk>": the trigger event}}: what
    # its templates' `event.` reads for each installation.
    recipients: Mapped[dict[str, Any]] = mapped_column(JsonValue)
    # The reason of the last transient failure, reported if retries run out.
    last_reason: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # What this batch did, written when it is marked done: recipients found (first attempt only:
    # a retry batch re-sends some of them), accepted, failed, tokens removed. Kept here rather
    # than bumped on the send: every batch of a send updating the send's row makes the workers
    # queue on that row's lock, each holding it until its commit comes back through a busy event
    # loop (measured: 12-33 of 41 connections waiting, HTTP/2 idle a third of the time).
    targeted: Mapped[int] = mapped_column(default=0)
    sent: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    tokens_deleted: Mapped[int] = mapped_column(default=0)
    # Of `sent`, how many were sent again after an unknown outcome (timeout, crash).
    resent: Mapped[int] = mapped_column(default=0, server_default="0")
    # The worker holding the lease (a random id per worker process): only it may renew or
    # finish the batch.
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    # Progress within the batch while it is sent (decision 0032): bit i set when the outcome of
    # the i-th recipient of `recipients` (its installations, then its tokens) is recorded; a
    # batch taken over or handed back sends only the others. Set with the first outcomes, when
    # `recipients` is also rewritten as resolved ({"installations", "tokens"}) so that the
    # positions hold.
    progress: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Its recipients without a recorded outcome may have reached their device already (a
    # worker died holding the batch; or a retry of requests written then unanswered): those
    # accepted now are counted as re-sent.
    outcome_unknown: Mapped[bool] = mapped_column(default=False, server_default=false())


# The tables themselves, for Core statements on hot paths (no ORM unit of work or identity map).
SENDS = cast(Table, Send.__table__)
BATCHES = cast(Table, DeliveryBatch.__table__)
