"""Transactional sends: validate, commit the send and its batches (the outbox), nothing more.

Recipients are resolved to devices by the worker when it delivers a batch, which keeps the API
call to a few inserts (its latency and throughput are the figures of docs/architecture.md).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from itertools import islice

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.service import AppAccess
from clarion.db import utcnow
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send, SendKind
from clarion.errors import NotFoundError
from clarion.events.models import PushEvent, PushEventKind
from clarion.queue import BatchJob, defer_batches
from clarion.transactional.schemas import SendError, SendRead, TransactionalSend


async def send_transactional(
    session: AsyncSession, *, access: AppAccess, body: TransactionalSend, batch_size: int
) -> Send:
    now = utcnow()
    content = body.model_dump(exclude={"recipients", "group_id", "sandbox"}, exclude_none=True)
    send = Send(
        token=str(uuid.uuid4()),
        app_id=access.app.id,
        kind=SendKind.TRANSACTIONAL.value,
        group_id=body.group_id,
        dev_only=access.is_dev,
        sandbox=body.sandbox,
        content=content,
        created_at=now,
        expires_at=now + timedelta(seconds=body.time_to_live) if body.time_to_live else None,
    )
    session.add(send)
    await session.flush()

    batches = [
        DeliveryBatch(send_id=send.id, recipients=chunk, not_before=now, last_enqueued_at=now)
        for chunk in _chunk_recipients(body, batch_size)
    ]
    session.add_all(batches)
    await session.flush()
    defer_batches(session, [BatchJob(batch.id) for batch in batches])
    return send


async def describe_send(session: AsyncSession, *, access: AppAccess, token: str) -> SendRead:
    found = await session.scalar(
        select(Send.id).where(Send.token == token, Send.app_id == access.app.id)
    )
    if found is None:
        raise NotFoundError(f"no transactional send {token!r}")
    # Pending batches first, then the counters: a batch is marked done in the same commit that
    # bumps the counters, so this order never shows "nothing pending" with stale counters, even
    # where each SELECT sees its own snapshot (SQLite outside a transaction).
    pending = await session.scalar(
        select(func.count())
        .select_from(DeliveryBatch)
        .where(DeliveryBatch.send_id == found, DeliveryBatch.status != BatchStatus.DONE.value)
    )
    send = await session.get(Send, found, populate_existing=True)
    assert send is not None
    errors = await session.scalars(
        select(PushEvent)
        .where(
            PushEvent.send_token == send.token,
            PushEvent.kind.in_([PushEventKind.ERROR.value, PushEventKind.TOKEN_DELETED.value]),
        )
        .order_by(PushEvent.id.desc())
        .limit(20)
    )
    return SendRead(
        token=send.token,
        group_id=send.group_id,
        created_at=send.created_at,
        expires_at=send.expires_at,
        targeted=send.targeted,
        sent=send.sent,
        failed=send.failed,
        tokens_deleted=send.tokens_deleted,
        pending_batches=pending or 0,
        last_errors=[
            SendError(
                kind=e.kind,
                install_id=e.install_id,
                push_token=e.push_token,
                reason=e.reason,
                occurred_at=e.occurred_at,
            )
            for e in errors
        ],
    )


def _chunk_recipients(body: TransactionalSend, size: int) -> list[dict[str, list[str]]]:
    """Split the identifiers into batches of at most `size`, deduplicated, order kept."""
    tagged = [
        (kind, value)
        for kind in ("custom_ids", "install_ids", "tokens")
        for value in dict.fromkeys(getattr(body.recipients, kind))
    ]
    chunks: list[dict[str, list[str]]] = []
    items = iter(tagged)
    while chunk := list(islice(items, size)):
        grouped: dict[str, list[str]] = {}
        for kind, value in chunk:
            grouped.setdefault(kind, []).append(value)
        chunks.append(grouped)
    return chunks
