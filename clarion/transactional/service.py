"""Transactional sends: validate, commit the send and its batches (the outbox), nothing more.

Recipients are resolved to devices by the worker when it delivers a batch, which keeps the API
call to its share of a few inserts (the figures are in docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from itertools import islice
from typing import Any

from sqlalchemy import case, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.service import AppAccess
from clarion.batching import TurnBatcher
from clarion.campaigns.service import (
    check_payload_size,
    landing_content,
    landing_theme_checked,
    template_content,
)
from clarion.db import transaction, utcnow
from clarion.delivery.content import has_templates
from clarion.delivery.models import BATCHES, SENDS, BatchStatus, Send, SendKind
from clarion.delivery.personalisation import check_templates
from clarion.delivery.service import batch_totals
from clarion.errors import NotFoundError
from clarion.events.models import PushEvent, PushEventKind
from clarion.metrics import count_sends
from clarion.queue import BatchJob, JobQueue
from clarion.transactional.schemas import (
    RECIPIENT_KINDS,
    SendError,
    SendRead,
    TransactionalSend,
)

log = logging.getLogger(__name__)

# Built once: a statement given its values as parameters compiles once and is then cached.
# Built on the tables, not the mapped classes, so the session runs them as plain Core.
_CLOCK_SKEW = timedelta(hours=1)  # between processes' clocks, generously
_INSERT_SENDS = insert(SENDS).returning(SENDS.c.id, sort_by_parameter_order=True)
_INSERT_BATCHES = insert(BATCHES).returning(BATCHES.c.id, sort_by_parameter_order=True)


@dataclass(frozen=True, slots=True)
class _PendingSend:
    row: dict[str, Any]
    chunks: list[dict[str, list[str]]]


class SendIntake:
    """Stores transactional sends with a group commit (clarion.batching): the sends of the calls
    being served in the same turn of the event loop share one transaction, one multi-row INSERT
    per table and one enqueue, and each call returns once that transaction has committed (its
    jobs are enqueued right after).

    This is the API's hottest path. A transaction per call (begin, two INSERTs, commit through
    the session machinery) cost more than all the rest of the call; grouped, it is paid once per
    burst. A call alone waits for no one: its group is itself. If the transaction fails, every
    call of the group fails and none of their rows exist (all or nothing per call, as before).
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], queue: JobQueue, *, batch_size: int
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._batch_size = batch_size
        self._batcher = TurnBatcher(self._store_group)
        self._enqueuing: set[asyncio.Future[None]] = set()  # referenced until done

    async def submit(self, *, access: AppAccess, body: TransactionalSend) -> str:
        """Store the send and its batches (the outbox), enqueue their jobs; returns the token."""
        envelope = {"recipients", "group_id", "sandbox", "template_id", "landing"}
        if body.template_id is None and body.landing is None:
            content = body.model_dump(exclude=envelope, exclude_none=True)
        else:
            content = await self._content(access, body, envelope)
        now = utcnow()
        token = str(uuid.uuid4())
        ttl = content.get("time_to_live")
        row = {
            "token": token,
            "app_id": access.app_id,
            "kind": SendKind.TRANSACTIONAL.value,
            "group_id": body.group_id or body.template_id,
            "dev_only": access.is_dev,
            "sandbox": body.sandbox,
            "content": content,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl) if ttl else None,
        }
        await self._batcher.submit(_PendingSend(row, _chunk_recipients(body, self._batch_size)))
        return token

    async def _content(
        self, access: AppAccess, body: TransactionalSend, envelope: set[str]
    ) -> dict[str, Any]:
        """The content of a send that needs the database: a template's (Partners API), or a
        landing whose theme is checked and resolved."""
        if body.template_id is not None:
            # The template's texts may be templates (personalisation), so the texts that
            # override them are rendered as templates too: they must be valid ones.
            await check_templates(body.template_fields())
        async with self._sessions() as session:
            if body.template_id is None:
                content = body.model_dump(exclude=envelope, exclude_none=True)
            else:
                content = await template_content(session, access=access, token=body.template_id)
                # The fields the caller gave override the template's; a message replaces them
                # all, and a deeplink or a landing replaces the other (a tap opens one of them).
                given = body.model_dump(exclude=envelope, exclude_unset=True, exclude_none=True)
                if "message" in given or "messages" in given:
                    content.pop("messages", None)
                if "deeplink" in given or body.landing is not None:
                    content.pop("landing", None)
                    content.pop("deeplink", None)
                if given.get("push_type") == "background":
                    content.pop("landing", None)  # a silent push shows nothing to tap
                content.update(given)
                content.pop("personalised", None)
                if has_templates(content):
                    content["personalised"] = True
            if body.landing is not None:
                themes = await landing_theme_checked(session, access=access, landing=body.landing)
                content["landing"] = landing_content(body.landing, themes)
            if "landing" in content:
                # A template's landing was checked when its campaign was saved; the push it
                # makes with the fields of this call is measured here.
                check_payload_size(content, platform=access.platform)
        return content

    async def _store_group(self, group: list[_PendingSend]) -> None:
        jobs = await self._store(group)
        # The calls answer as soon as their sends are committed; the jobs follow on their own
        # (waiting for them too measured 700-820 accepted/s against 780-930, workers in process).
        enqueue = asyncio.ensure_future(self._enqueue(jobs))
        self._enqueuing.add(enqueue)
        enqueue.add_done_callback(self._enqueuing.discard)

    async def _enqueue(self, jobs: list[BatchJob]) -> None:
        try:
            await self._queue.enqueue(jobs)
        except Exception:
            # The sends are committed: the outbox sweep enqueues them again shortly.
            log.exception("enqueue after a committed group of sends failed")

    async def _store(self, group: list[_PendingSend]) -> list[BatchJob]:
        now = group[0].row["created_at"]
        async with transaction(self._sessions) as session:
            send_ids = (
                await session.execute(_INSERT_SENDS, [pending.row for pending in group])
            ).scalars()
            count_sends(session, SendKind.TRANSACTIONAL.value, len(group))
            chunks = [
                (send_id, chunk)
                for send_id, pending in zip(send_ids, group, strict=True)
                for chunk in pending.chunks
            ]
            batch_ids = (
                await session.execute(
                    _INSERT_BATCHES,
                    [
                        {
                            "send_id": send_id,
                            "recipients": chunk,
                            "not_before": now,
                            "last_enqueued_at": now,
                        }
                        for send_id, chunk in chunks
                    ],
                )
            ).scalars()
            return [
                BatchJob(batch_id, recipients=sum(map(len, chunk.values())))
                for batch_id, (_, chunk) in zip(batch_ids, chunks, strict=True)
            ]


async def describe_send(session: AsyncSession, *, access: AppAccess, token: str) -> SendRead:
    found = await session.scalar(
        select(Send.id).where(Send.token == token, Send.app_id == access.app_id)
    )
    if found is None:
        raise NotFoundError(f"no transactional send {token!r}")
    # Progress is the sum of the send's batches (each written when the batch is done), read in
    # one statement: the pending count and the counters come from the same snapshot.
    progress = (
        await session.execute(
            select(
                func.count(case((BATCHES.c.status != BatchStatus.DONE.value, 1))).label("pending"),
                *batch_totals(),
            ).where(BATCHES.c.send_id == found)
        )
    ).one()
    send = await session.get(Send, found)
    assert send is not None
    errors = await session.scalars(
        select(PushEvent)
        .where(
            PushEvent.send_token == send.token,
            PushEvent.kind.in_([PushEventKind.ERROR.value, PushEventKind.TOKEN_DELETED.value]),
            # No event of a send is older than the send (an hour for clocks that differ between
            # processes): PostgreSQL then reads the day partitions from the send's on, not the
            # 400 kept (16 ms planned over 411 partitions, 0.24 over 11; decision 0041).
            PushEvent.occurred_at >= send.created_at - _CLOCK_SKEW,
        )
        .order_by(PushEvent.id.desc())
        .limit(20)
    )
    return SendRead(
        token=send.token,
        group_id=send.group_id,
        created_at=send.created_at,
        expires_at=send.expires_at,
        targeted=progress.targeted,
        sent=progress.sent,
        resent=progress.resent,
        failed=progress.failed,
        tokens_deleted=progress.tokens_deleted,
        pending_batches=progress.pending,
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
        for kind in RECIPIENT_KINDS
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
