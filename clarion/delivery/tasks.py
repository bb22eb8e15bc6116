"""What runs in the background for delivery: the Deliverer takes a job's batches (a queue worker),
claims them, resolves their recipients, sends, and records the outcomes in bulk; and it sweeps the
outbox for batches no job names (clarion.runtime starts both).

The only place that decides what an Outcome means: push_sent, token_deleted (and the token is
removed), push_error (reason verbatim), or a retry batch after an exponential backoff that
honours Retry-After and never goes past the send's time to live. See docs/architecture.md."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.models import App
from clarion.config import Settings
from clarion.custom_data.service import attributes_of
from clarion.db import transaction, utcnow
from clarion.delivery.content import build_notification, language_key, personalised_fields
from clarion.delivery.models import BATCHES, BatchStatus, DeliveryBatch, Send
from clarion.delivery.personalisation import TemplateLimitError
from clarion.delivery.pool import ProviderPool
from clarion.delivery.providers.base import DeliveryResult, Outcome, ProviderConfigError
from clarion.delivery.service import STOPPED, Recipient, resolve_recipients
from clarion.events.models import PushEventKind
from clarion.events.service import PushEventRow, push_event_row, record_push_events
from clarion.queue import BatchJob, JobQueue
from clarion.sdk.models import Installation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Delivered:
    """One batch of a job, after sending: what each of its recipients' requests gave."""

    batch: DeliveryBatch
    send: Send
    app: App
    recipients: Sequence[Recipient]
    results: Sequence[DeliveryResult]


# A batch done, with what it did (executemany: one row per batch of the job).
_FINISH_BATCH = (
    update(BATCHES)
    .where(BATCHES.c.id == bindparam("batch_id"))
    .values(
        status=BatchStatus.DONE.value,
        finished_at=bindparam("now"),
        lease_until=None,
        targeted=bindparam("add_targeted"),
        sent=bindparam("add_sent"),
        failed=bindparam("add_failed"),
        tokens_deleted=bindparam("add_deleted"),
    )
)


# Groups of devices (one per environment, language and rendered text) a batch sends at once:
# a worker's 32 jobs then have up to 8,000 requests ready, four times what its HTTP/2
# connections carry at a time (2 x 1,000 streams).
_GROUPS_AT_ONCE = 250


@dataclass(slots=True)
class _Tally:
    sent: int = 0
    failed: int = 0
    deleted: int = 0


def retry_delay(attempt: int, retry_after: float | None, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter (half to full), never shorter than Retry-After."""
    backoff = min(cap, base * 2.0**attempt) * (0.5 + random.random() / 2)
    return max(backoff, retry_after or 0.0)


class Deliverer:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        pool: ProviderPool,
        queue: JobQueue,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self._pool = pool
        self._queue = queue
        self._settings = settings

    async def deliver_batches(self, batch_ids: list[int]) -> None:
        """Deliver the batches of one job: those already done, held by a live worker or not
        due yet are skipped; the others are claimed, sent together and recorded together."""
        claimed = await self._claim(batch_ids)
        if not claimed:
            return
        try:
            await self._deliver_claimed(claimed)
        except Exception as exc:
            # Not a provider outcome (those are results): the database or a bug. Hand the
            # batches back now rather than leave them leased, and count the attempt so they
            # cannot loop.
            log.exception("delivery of batches %s failed; releasing them for a retry", claimed)
            await self._release(claimed, exc)
            raise

    async def _claim(self, batch_ids: list[int]) -> list[int]:
        now = utcnow()
        lease = now + timedelta(seconds=self._settings.batch_lease_seconds)
        async with transaction(self._sessions) as session:
            claimed = await session.scalars(
                update(BATCHES)
                .where(
                    BATCHES.c.id.in_(batch_ids),
                    BATCHES.c.not_before <= now,
                    or_(
                        BATCHES.c.status == BatchStatus.PENDING.value,
                        (BATCHES.c.status == BatchStatus.SENDING.value)
                        & (BATCHES.c.lease_until < now),
                    ),
                )
                .values(status=BatchStatus.SENDING.value, lease_until=lease)
                .returning(BATCHES.c.id)
            )
            return sorted(claimed)

    @staticmethod
    async def _close_cancelled(session: AsyncSession, batch_ids: list[int]) -> None:
        """In the caller's session: on SQLite a second session would wait for the one connection
        that the caller holds (docs/conventions.md, "one session at a time")."""
        await session.execute(
            update(BATCHES)
            .where(BATCHES.c.id.in_(batch_ids))
            .values(
                status=BatchStatus.DONE.value,
                finished_at=utcnow(),
                lease_until=None,
                last_reason=STOPPED,
            )
        )
        await session.commit()

    async def _release(self, batch_ids: list[int], error: Exception) -> None:
        """Hand failed batches back for a later attempt; at the last attempt, give them up
        (done, the error kept as the batch's last_reason) so that a poison batch cannot loop."""
        now = utcnow()
        give_up = BATCHES.c.attempt + 1 >= self._settings.retry_max_attempts
        async with transaction(self._sessions) as session:
            await session.execute(
                update(BATCHES)
                .where(
                    BATCHES.c.id.in_(batch_ids),
                    BATCHES.c.status == BatchStatus.SENDING.value,
                )
                .values(
                    status=case((give_up, BatchStatus.DONE.value), else_=BatchStatus.PENDING.value),
                    finished_at=case((give_up, now), else_=None),
                    lease_until=None,
                    attempt=BATCHES.c.attempt + 1,
                    not_before=now + timedelta(seconds=self._settings.retry_base_seconds),
                    last_reason=f"InternalError: {error!r}"[:1024],
                )
            )

    async def _deliver_claimed(self, batch_ids: list[int]) -> None:
        async with self._sessions() as session:
            batches = (
                await session.scalars(
                    select(DeliveryBatch)
                    .where(DeliveryBatch.id.in_(batch_ids))
                    .order_by(DeliveryBatch.id)
                )
            ).all()
            sends = {
                send.id: send
                for send in await session.scalars(
                    select(Send).where(Send.id.in_({batch.send_id for batch in batches}))
                )
            }
            # Batches of a send stopped after they were claimed (or retries written after the
            # stop) close unsent.
            cancelled = [b.id for b in batches if sends[b.send_id].cancelled_at is not None]
            if cancelled:
                await self._close_cancelled(session, cancelled)
                closed = set(cancelled)
                batches = [b for b in batches if b.id not in closed]
                if not batches:
                    return
            apps = {
                app.id: app
                for app in await session.scalars(
                    select(App).where(App.id.in_({send.app_id for send in sends.values()}))
                )
            }
            targets = [
                (batch, sends[batch.send_id], apps[sends[batch.send_id].app_id])
                for batch in batches
            ]
            work = [
                (batch, send, app, recipients)
                for (batch, send, app), recipients in zip(
                    targets, await resolve_recipients(session, targets), strict=True
                )
            ]
            # Personalised sends need their users' attributes: one query per such batch. A
            # Dev-key send renders with none (the defaults): its recipients are debug installs,
            # which claim any custom id they like, so rendering their profile would hand the
            # app's Custom Data to whoever holds the Dev key (docs/api-keys.md).
            attributes: dict[int, dict[str, dict[str, Any]]] = {}
            for batch, send, app, recipients in work:
                if send.content.get("personalised") and send.dev_only:
                    attributes[batch.id] = {}
                elif send.content.get("personalised"):
                    attributes[batch.id] = await attributes_of(
                        session,
                        app_id=app.id,
                        custom_ids=[r.custom_id for r in recipients if r.custom_id],
                    )
        now = utcnow()
        answers = await asyncio.gather(
            *(
                self._send(
                    app,
                    send,
                    recipients,
                    now,
                    attributes.get(batch.id),
                    batch.recipients.get("events"),
                )
                for batch, send, app, recipients in work
            )
        )
        retries = await self._record(
            [
                _Delivered(batch, send, app, recipients, results)
                for (batch, send, app, recipients), results in zip(work, answers, strict=True)
            ]
        )
        await self._queue.enqueue(retries)

    async def _send(
        self,
        app: App,
        send: Send,
        recipients: Sequence[Recipient],
        now: datetime,
        attributes: dict[str, dict[str, Any]] | None = None,
        events: dict[str, dict[str, Any]] | None = None,
    ) -> list[DeliveryResult]:
        """`attributes`: for a personalised send, each custom user id's attributes; `events`:
        for an automation's, the event that triggered each installation's push (by its pk)."""
        if send.expires_at is not None and now >= send.expires_at:
            return [DeliveryResult(Outcome.FAILED, reason="Expired")] * len(recipients)
        results: list[DeliveryResult | None] = [None] * len(recipients)
        renders: list[tuple[str | None, ...] | DeliveryResult | None] = [None] * len(recipients)
        if attributes is not None:
            # Up to batch_size (1,000) renders of up to ~13 ms each (the template limits):
            # CPU work, kept off the event loop.
            renders = await asyncio.to_thread(
                _personalise, send.content, recipients, attributes, events or {}
            )
        # Devices that share an environment, a language and (personalised sends) the same
        # rendered texts get one rendering of the payload.
        groups: dict[tuple[bool, str, tuple[str | None, ...] | None], list[int]] = defaultdict(list)
        for index, (recipient, rendered) in enumerate(zip(recipients, renders, strict=True)):
            if app.platform == "web" and recipient.p256dh is None:
                results[index] = DeliveryResult(Outcome.FAILED, reason="UnknownSubscription")
                continue
            if isinstance(rendered, DeliveryResult):
                results[index] = rendered
                continue
            language = language_key(send.content, recipient.language)
            groups[(recipient.sandbox, language, rendered)].append(index)
        # The groups go out together, _GROUPS_AT_ONCE at a time: a personalised push is often
        # a group of one (each user's own name, an automation's own trigger event), and a
        # batch of 1,000 such groups sent one after the other waits 1,000 round trips
        # (measured: 2.9 s p50 late for 1,000 automation pushes/s, 0.5 s together); all 1,000
        # at once, in each of a worker's 32 jobs, hold 32,000 tasks and their payloads.
        listed = list(groups.items())
        for start in range(0, len(listed), _GROUPS_AT_ONCE):
            some = listed[start : start + _GROUPS_AT_ONCE]
            answers = await asyncio.gather(
                *(
                    self._send_group(app, send, recipients, indexes, sandbox, rendered)
                    for (sandbox, _, rendered), indexes in some
                )
            )
            for (_, indexes), answer in zip(some, answers, strict=True):
                for index, result in zip(indexes, answer, strict=True):
                    results[index] = result
        return [r if r is not None else DeliveryResult(Outcome.FAILED) for r in results]

    async def _send_group(
        self,
        app: App,
        send: Send,
        recipients: Sequence[Recipient],
        indexes: list[int],
        sandbox: bool,
        rendered: tuple[str | None, ...] | None,
    ) -> list[DeliveryResult]:
        try:
            provider = self._pool.provider_for(app, sandbox=sandbox)
        except ProviderConfigError as exc:
            return [DeliveryResult(Outcome.FAILED, reason=f"InvalidCredentials: {exc}")] * len(
                indexes
            )
        if provider is None:
            reason = f"NotConfigured: no {app.platform} credentials"
            return [DeliveryResult(Outcome.FAILED, reason=reason)] * len(indexes)
        notification = build_notification(send, recipients[indexes[0]].language, rendered)
        try:
            return await provider.send(notification, [recipients[i].device() for i in indexes])
        except Exception as exc:
            # A provider bug must not wedge the batch: retry it, and after the last attempt the
            # devices get push_error with this reason instead of looping forever.
            log.exception("provider %s failed on send %s", app.platform, send.token)
            return [DeliveryResult(Outcome.RETRY, reason=f"InternalError: {exc!r}")] * len(indexes)

    async def _record(self, delivered: Sequence[_Delivered]) -> list[BatchJob]:
        """Every outcome of one job in one transaction; returns the retry jobs to enqueue."""
        now = utcnow()
        events: list[PushEventRow] = []
        dead_installations: list[int] = []
        finished: list[dict[str, Any]] = []
        retry_batches: list[DeliveryBatch] = []
        for item in delivered:
            tally, retry_batch = self._outcomes(item, now, events, dead_installations)
            finished.append(
                {
                    "batch_id": item.batch.id,
                    "now": now,
                    "add_targeted": len(item.recipients) if item.batch.attempt == 0 else 0,
                    "add_sent": tally.sent,
                    "add_failed": tally.failed,
                    "add_deleted": tally.deleted,
                }
            )
            if retry_batch is not None:
                retry_batches.append(retry_batch)

        async with transaction(self._sessions) as session:
            await record_push_events(session, events)
            if dead_installations:
                await session.execute(
                    update(Installation)
                    .where(Installation.id.in_(dead_installations))
                    .values(push_token=None, webpush_p256dh=None, webpush_auth=None)
                )
            await session.execute(_FINISH_BATCH, finished)
            session.add_all(retry_batches)
            await session.flush()
        return [
            BatchJob(batch.id, delay=batch.not_before - now, recipients=None)
            for batch in retry_batches
        ]

    def _outcomes(
        self,
        item: _Delivered,
        now: datetime,
        events: list[PushEventRow],
        dead_installations: list[int],
    ) -> tuple[_Tally, DeliveryBatch | None]:
        """One batch's results as events (appended), dead installations (appended), counters,
        and the batch of recipients to retry later, if any."""
        batch, send, app = item.batch, item.send, item.app
        tally = _Tally()
        to_retry: list[tuple[Recipient, DeliveryResult]] = []
        last_attempt = batch.attempt + 1 >= self._settings.retry_max_attempts

        for recipient, result in zip(item.recipients, item.results, strict=True):
            outcome = result.outcome
            if outcome is Outcome.RETRY and not last_attempt:
                to_retry.append((recipient, result))
                continue
            if outcome is Outcome.DELIVERED:
                kind, tally.sent = PushEventKind.SENT, tally.sent + 1
            elif outcome is Outcome.TOKEN_INVALID:
                kind, tally.deleted = PushEventKind.TOKEN_DELETED, tally.deleted + 1
                if recipient.installation_id is not None:
                    dead_installations.append(recipient.installation_id)
            else:  # FAILED, or RETRY with no attempt left
                kind, tally.failed = PushEventKind.ERROR, tally.failed + 1
            events.append(self._event(app, send, recipient, kind, now, result.reason))

        if not to_retry:
            return tally, None
        delay = max(
            retry_delay(
                batch.attempt,
                r.retry_after,
                base=self._settings.retry_base_seconds,
                cap=self._settings.retry_max_seconds,
            )
            for _, r in to_retry
        )
        due = now + timedelta(seconds=delay)
        if send.expires_at is not None and due >= send.expires_at:
            # Retrying would deliver after the time to live: give up now, reason verbatim.
            for recipient, result in to_retry:
                tally.failed += 1
                events.append(
                    self._event(app, send, recipient, PushEventKind.ERROR, now, result.reason)
                )
            return tally, None
        reason = to_retry[0][1].reason
        return tally, DeliveryBatch(
            send_id=send.id,
            attempt=batch.attempt + 1,
            not_before=due,
            last_enqueued_at=now,
            recipients=_resolved_recipients(
                (r for r, _ in to_retry), events=batch.recipients.get("events")
            ),
            last_reason=reason[:1024] if reason else None,
        )

    @staticmethod
    def _event(
        app: App,
        send: Send,
        recipient: Recipient,
        kind: PushEventKind,
        at: datetime,
        reason: str | None,
    ) -> PushEventRow:
        # The send token rides on campaign events too: it names the A/B version of the send.
        return push_event_row(
            app_id=app.id,
            kind=kind,
            occurred_at=at,
            platform=app.platform,
            install_id=recipient.install_id,
            custom_id=recipient.custom_id,
            advertising_id=recipient.advertising_id,
            push_token=recipient.token,
            send_token=send.token,
            group_id=send.group_id,
            campaign_token=send.campaign_token,
            reason=None if kind in (PushEventKind.SENT,) else reason,
        )

    async def sweep_outbox(self, *, grace_seconds: float | None = None) -> int:
        """Re-enqueue batches whose job was lost; returns how many. Safe to run anywhere, any
        time: the per-batch dedupe key and the claim make extra enqueues harmless."""
        now = utcnow()
        grace = timedelta(
            seconds=self._settings.sweep_interval_seconds
            if grace_seconds is None
            else grace_seconds
        )
        async with transaction(self._sessions) as session:
            ids = list(
                await session.scalars(
                    select(DeliveryBatch.id)
                    .where(
                        or_(
                            (DeliveryBatch.status == BatchStatus.PENDING.value)
                            & (DeliveryBatch.not_before <= now)
                            & (DeliveryBatch.last_enqueued_at <= now - grace),
                            (DeliveryBatch.status == BatchStatus.SENDING.value)
                            & (DeliveryBatch.lease_until < now),
                        )
                    )
                    .order_by(DeliveryBatch.id)
                    .limit(5000)
                )
            )
            if ids:
                await session.execute(
                    update(DeliveryBatch)
                    .where(DeliveryBatch.id.in_(ids))
                    .values(last_enqueued_at=now)
                )
        await self._queue.enqueue([BatchJob(batch_id) for batch_id in ids])
        if ids:
            log.info("outbox sweep re-enqueued %d batches", len(ids))
        return len(ids)


def _resolved_recipients(
    recipients: Iterable[Recipient], *, events: dict[str, Any] | None
) -> dict[str, Any]:
    """A retry batch's recipients; with the trigger events of those it retries, if the batch
    had them (an automation's push renders `event.` again on the retry)."""
    installations: list[int] = []
    tokens: list[str] = []
    for recipient in recipients:
        if recipient.installation_id is not None:
            installations.append(recipient.installation_id)
        else:
            tokens.append(recipient.token)
    resolved: dict[str, Any] = {"installations": installations, "tokens": tokens}
    if events:
        kept = {str(pk): events[str(pk)] for pk in installations if str(pk) in events}
        if kept:
            resolved["events"] = kept
    return resolved


def _personalise(
    content: dict[str, Any],
    recipients: Sequence[Recipient],
    attributes: dict[str, dict[str, Any]],
    events: dict[str, dict[str, Any]],
) -> list[tuple[str | None, ...] | DeliveryResult | None]:
    """Each recipient's personalised texts, or the failure of a template that goes beyond a
    limit for this user's values: the same template fails the same way on a retry, so it is a
    push_error, not a retry."""
    renders: list[tuple[str | None, ...] | DeliveryResult | None] = []
    for recipient in recipients:
        try:
            renders.append(
                personalised_fields(
                    content,
                    recipient.language,
                    attributes.get(recipient.custom_id or "", {}),
                    events.get(str(recipient.installation_id)),
                )
            )
        except TemplateLimitError as exc:
            renders.append(DeliveryResult(Outcome.FAILED, reason=f"TemplateLimit: {exc.message}"))
    return renders
