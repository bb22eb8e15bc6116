"""Transactional sends: validate, commit the send and its batches (the outbox), nothing more.

Recipients are resolved to devices by the worker when it delivers a batch, which keeps the API
call to a few inserts (its latency and throughput are the figures of docs/architecture.md).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from itertools import islice

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.service import AppAccess
from clarion.db import utcnow
from clarion.delivery.models import BATCHES, SENDS, BatchStatus, DeliveryBatch, Send, SendKind
from clarion.errors import NotFoundError
from clarion.events.models import PushEvent, PushEventKind
from clarion.queue import BatchJob, defer_batches
from clarion.transactional.schemas import SendError, SendRead, TransactionalSend

# Built once: a statement given its values as parameters compiles once and is then cached.
# Built on the tables, not the mapped classes, so the session runs them as plain Core.
_INSERT_SEND = insert(SENDS).returning(SENDS.c.id)
_INSERT_BATCH = insert(BATCHES).returning(BATCHES.c.id, sort_by_parameter_order=True)


async def send_transactional(
    session: AsyncSession, *, access: AppAccess, body: TransactionalSend, batch_size: int
) -> str:
    """Store the send and its batches, defer their jobs; returns the send's token.

    Core statements on the session's connection rather than ORM objects: this is the API's
    hottest path, where the unit of work cost more than the rest of the call.
    """
    now = utcnow()
    token = str(uuid.uuid4())
    send_id = (
        await session.execute(
            _INSERT_SEND,
            {
                "token": token,
                "app_id": access.app_id,
                "kind": SendKind.TRANSACTIONAL.value,
                "group_id": body.group_id,
                "dev_only": access.is_dev,
                "sandbox": body.sandbox,
                "content": body.model_dump(
                    exclude={"recipients", "group_id", "sandbox"}, exclude_none=True
                ),
                "created_at": now,
                "expires_at": (
                    now + timedelta(seconds=body.time_to_live) if body.time_to_live else None
                ),
            },
        )
    ).scalar_one()
    chunks = _chunk_recipients(body, batch_size)
    batch_ids = (
        await session.execute(
            _INSERT_BATCH,
            [
                {
                    "send_id": send_id,
                    "recipients": chunk,
                    "not_before": now,
                    "last_enqueued_at": now,
                }
                for chunk in chunks
            ],
        )
    ).scalars()
    defer_batches(
        session,
        [
            BatchJob(batch_id, recipients=sum(map(len, chunk.values())))
            for batch_id, chunk in zip(batch_ids, chunks, strict=True)
        ],
    )
    return token


async def describe_send(session: AsyncSession, *, access: AppAccess, token: str) -> SendRead:
    found = await session.scalar(
        select(Send.id).where(Send.token == token, Send.app_id == access.app_id)
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
