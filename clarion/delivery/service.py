"""Delivering a job's batches: claim them, resolve recipients, send, record outcomes in bulk.

The only place that decides what an Outcome means: push_sent, token_deleted (and the token is
removed), push_error (reason verbatim), or a retry batch after an exponential backoff that
honours Retry-After and never goes past the send's time to live. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    String,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import Label
from sqlalchemy.types import TypeEngine

from clarion.apps.models import App
from clarion.config import Settings
from clarion.custom_data.service import attributes_of
from clarion.db import in_values, transaction, uses_arrays, utcnow
from clarion.delivery.content import build_notification, language_key, personalised_fields
from clarion.delivery.models import BATCHES, SENDS, BatchStatus, DeliveryBatch, Send
from clarion.delivery.pool import ProviderPool
from clarion.delivery.providers.base import (
    DeliveryResult,
    Device,
    Notification,
    Outcome,
    ProviderConfigError,
)
from clarion.errors import MalformedParameterError, MissingParameterError, NotFoundError
from clarion.events.models import PushEventKind
from clarion.events.service import PushEventRow, push_event_row, record_push_events
from clarion.queue import BatchJob, JobQueue
from clarion.sdk.models import Installation

log = logging.getLogger(__name__)

STOPPED = "Stopped"  # last_reason of the batches of a stopped send


@dataclass(slots=True)
class Recipient:
    token: str
    installation_id: int | None = None
    install_id: str | None = None
    custom_id: str | None = None
    advertising_id: str | None = None
    language: str | None = None
    p256dh: str | None = None
    auth: str | None = None
    sandbox: bool = False

    def device(self) -> Device:
        return Device(token=self.token, p256dh=self.p256dh, auth=self.auth)


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

    async def _close_cancelled(self, batch_ids: list[int]) -> None:
        async with transaction(self._sessions) as session:
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
                await self._close_cancelled(cancelled)
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
            # Personalised sends need their users' attributes: one query per such batch.
            attributes: dict[int, dict[str, dict[str, Any]]] = {}
            for batch, send, app, recipients in work:
                if send.content.get("personalised"):
                    attributes[batch.id] = await attributes_of(
                        session,
                        app_id=app.id,
                        custom_ids=[r.custom_id for r in recipients if r.custom_id],
                    )
        now = utcnow()
        answers = await asyncio.gather(
            *(
                self._send(app, send, recipients, now, attributes.get(batch.id))
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
    ) -> list[DeliveryResult]:
        """`attributes`: for a personalised send, each custom user id's attributes."""
        if send.expires_at is not None and now >= send.expires_at:
            return [DeliveryResult(Outcome.FAILED, reason="Expired")] * len(recipients)
        results: list[DeliveryResult | None] = [None] * len(recipients)
        # Devices that share an environment, a language and (personalised sends) the same
        # rendered texts get one rendering of the payload.
        groups: dict[tuple[bool, str, tuple[str | None, ...] | None], list[int]] = defaultdict(list)
        for index, recipient in enumerate(recipients):
            if app.platform == "web" and recipient.p256dh is None:
                results[index] = DeliveryResult(Outcome.FAILED, reason="UnknownSubscription")
                continue
            rendered = None
            if attributes is not None:
                rendered = personalised_fields(
                    send.content, recipient.language, attributes.get(recipient.custom_id or "", {})
                )
            language = language_key(send.content, recipient.language)
            groups[(recipient.sandbox, language, rendered)].append(index)
        for (sandbox, _, rendered), indexes in groups.items():
            for index, answer in zip(
                indexes,
                await self._send_group(app, send, recipients, indexes, sandbox, rendered),
                strict=True,
            ):
                results[index] = answer
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
            recipients=_resolved_recipients(r for r, _ in to_retry),
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


async def send_test_push(
    session: AsyncSession,
    pool: ProviderPool,
    *,
    app: App,
    install_id: str = "",
    push_token: str = "",
    title: str,
    body: str,
) -> DeliveryResult:
    """One notification to one installation (or raw push token), now, outside the pipeline:
    the dashboard's credentials test. The provider's answer is returned as it is; nothing is
    recorded, retried or cleaned up, so a test never deletes a token."""
    installation = None
    if install_id:
        installation = await session.scalar(
            select(Installation).where(
                Installation.app_id == app.id, Installation.install_id == install_id
            )
        )
        if installation is None:
            raise NotFoundError(f"install_id: no installation {install_id!r} in this app")
        if installation.push_token is None:
            raise MalformedParameterError(f"install_id: {install_id!r} has no push token")
        push_token = installation.push_token
    if not push_token:
        raise MissingParameterError("install_id or push_token: one of them is needed")
    device = Device(
        token=push_token,
        p256dh=installation.webpush_p256dh if installation else None,
        auth=installation.webpush_auth if installation else None,
    )
    notification = Notification(send_id=f"test-{secrets.token_hex(8)}", title=title, body=body)
    try:
        # Debug builds get their APNs pushes from the sandbox; a raw token goes to production.
        provider = pool.provider_for(app, sandbox=bool(installation and installation.is_dev))
        if provider is None:
            raise MalformedParameterError("credentials: none are set for this app's platform")
        return (await provider.send(notification, [device]))[0]
    except ProviderConfigError as exc:
        return DeliveryResult(Outcome.FAILED, reason=f"unusable credentials: {exc}")


def batch_totals() -> list[Label[int]]:
    """Sums, over the delivery batches a statement selects, of what they did, labelled targeted,
    sent, failed and tokens_deleted (0 where there is none). A send's progress is its batches'."""
    columns = (BATCHES.c.targeted, BATCHES.c.sent, BATCHES.c.failed, BATCHES.c.tokens_deleted)
    return [func.coalesce(func.sum(column), 0).label(column.name) for column in columns]


async def cancel_sends(
    session: AsyncSession, send_ids: Select[tuple[int]], *, now: datetime
) -> None:
    """Stop these sends: batches not yet claimed close unsent, and a worker that claimed one
    (or retries one) closes it unsent too. Batches being sent at this moment finish."""
    ids = list(await session.scalars(send_ids))
    if not ids:
        return
    await session.execute(update(SENDS).where(SENDS.c.id.in_(ids)).values(cancelled_at=now))
    await session.execute(
        update(BATCHES)
        .where(BATCHES.c.send_id.in_(ids), BATCHES.c.status == BatchStatus.PENDING.value)
        .values(status=BatchStatus.DONE.value, finished_at=now, last_reason=STOPPED)
    )


def _resolved_recipients(recipients: Iterable[Recipient]) -> dict[str, list[Any]]:
    installations: list[int] = []
    tokens: list[str] = []
    for recipient in recipients:
        if recipient.installation_id is not None:
            installations.append(recipient.installation_id)
        else:
            tokens.append(recipient.token)
    return {"installations": installations, "tokens": tokens}


# Plain column rows, not ORM objects: ~10x cheaper per row, and a job has up to 1,000 of them.
# Statements built once with their values bound at execution: a job of small batches runs one
# query per kind of identifier, not one per batch, and pays no query construction each time.
_INSTALLATION_COLUMNS = select(
    Installation.id,
    Installation.push_token,
    Installation.install_id,
    Installation.custom_id,
    Installation.advertising_id,
    Installation.language,
    Installation.webpush_p256dh,
    Installation.webpush_auth,
    Installation.is_dev,
    Installation.app_id,
)
_TARGETED = _INSTALLATION_COLUMNS.where(
    Installation.app_id == bindparam("app_id"),
    Installation.push_token.is_not(None),
    Installation.push_optin.is_(True),
    Installation.is_dev == bindparam("is_dev"),
)


@dataclass(frozen=True, slots=True)
class _Lookups:
    """The recipient lookups of one dialect, each taking its list of values as "values"."""

    by_custom_id: Executable
    by_install_id: Executable
    by_advertising_id: Executable
    by_id: Executable
    by_token: Executable


def _lookups(*, array: bool) -> _Lookups:
    def one_of(column: Any, item_type: TypeEngine[Any]) -> ColumnElement[bool]:
        return in_values(column, "values", item_type, array=array)

    return _Lookups(
        by_custom_id=_TARGETED.where(one_of(Installation.custom_id, String())),
        by_install_id=_TARGETED.where(one_of(Installation.install_id, String())),
        by_advertising_id=_TARGETED.where(one_of(Installation.advertising_id, String())),
        # By primary key alone, app and token checked in Python: with `app_id = ? AND
        # push_token IS NOT NULL` beside it, SQLite walks the (app_id, push_token) index over
        # every installation of the app, once per batch (measured: a quarter of the worker's
        # time at 200,000 devices).
        by_id=_INSTALLATION_COLUMNS.where(one_of(Installation.id, BigInteger())),
        by_token=_INSTALLATION_COLUMNS.where(
            Installation.app_id == bindparam("app_id"),
            one_of(Installation.push_token, String()),
        ),
    )


_LOOKUPS = {array: _lookups(array=array) for array in (False, True)}


async def resolve_recipients(
    session: AsyncSession, work: Sequence[tuple[DeliveryBatch, Send, App]]
) -> list[list[Recipient]]:
    """The devices each batch of a job reaches, one per push token, in the batches' order.

    custom_ids, install_ids and advertising_ids reach opted-in installations of the key's kind
    (Dev key: debug builds only); raw tokens are explicit and reach their device whatever it
    reported.
    """
    # Every identifier of the job, per query and audience (app, key kind).
    custom_ids: dict[tuple[int, bool], set[str]] = defaultdict(set)
    install_ids: dict[tuple[int, bool], set[str]] = defaultdict(set)
    advertising_ids: dict[tuple[int, bool], set[str]] = defaultdict(set)
    installation_ids: set[int] = set()
    tokens: dict[int, set[str]] = defaultdict(set)
    for batch, send, app in work:
        wanted = batch.recipients
        audience = (app.id, send.dev_only)
        custom_ids[audience].update(wanted.get("custom_ids", ()))
        install_ids[audience].update(wanted.get("install_ids", ()))
        advertising_ids[audience].update(wanted.get("advertising_ids", ()))
        installation_ids.update(wanted.get("installations", ()))
        tokens[app.id].update(wanted.get("tokens", ()))

    by_custom_id: dict[tuple[int, bool, str], list[Any]] = defaultdict(list)
    by_install_id: dict[tuple[int, bool, str], Any] = {}
    by_advertising_id: dict[tuple[int, bool, str], list[Any]] = defaultdict(list)
    by_id: dict[int, Any] = {}
    by_token: dict[tuple[int, str], Any] = {}
    lookups = _LOOKUPS[uses_arrays(session)]
    for (app_id, is_dev), values in custom_ids.items():
        if values:
            params = {"app_id": app_id, "is_dev": is_dev, "values": list(values)}
            for row in await session.execute(lookups.by_custom_id, params):
                by_custom_id[(row.app_id, row.is_dev, row.custom_id)].append(row)
    for (app_id, is_dev), values in install_ids.items():
        if values:
            params = {"app_id": app_id, "is_dev": is_dev, "values": list(values)}
            for row in await session.execute(lookups.by_install_id, params):
                by_install_id[(row.app_id, row.is_dev, row.install_id)] = row
    for (app_id, is_dev), values in advertising_ids.items():
        if values:
            params = {"app_id": app_id, "is_dev": is_dev, "values": list(values)}
            for row in await session.execute(lookups.by_advertising_id, params):
                by_advertising_id[(row.app_id, row.is_dev, row.advertising_id)].append(row)
    if installation_ids:
        for row in await session.execute(lookups.by_id, {"values": list(installation_ids)}):
            by_id[row.id] = row
    for app_id, values in tokens.items():
        if values:
            params = {"app_id": app_id, "values": list(values)}
            for row in await session.execute(lookups.by_token, params):
                by_token[(row.app_id, row.push_token)] = row

    resolved: list[list[Recipient]] = []
    for batch, send, app in work:
        wanted = batch.recipients
        audience = (app.id, send.dev_only)
        rows = [
            *(
                row
                for value in wanted.get("custom_ids", ())
                for row in by_custom_id[(*audience, value)]
            ),
            *(by_install_id.get((*audience, value)) for value in wanted.get("install_ids", ())),
            *(
                row
                for value in wanted.get("advertising_ids", ())
                for row in by_advertising_id[(*audience, value)]
            ),
            *(by_id.get(pk) for pk in wanted.get("installations", ())),
            *(by_token.get((app.id, token)) for token in wanted.get("tokens", ())),
        ]
        raw_tokens = set(wanted.get("tokens", ()))
        ios = app.platform == "ios"
        devices: dict[str, Recipient] = {}
        for row in rows:
            if row is None or row.push_token is None or row.app_id != app.id:
                continue  # unknown, or its token was removed since the batch was written
            devices[row.push_token] = Recipient(
                token=row.push_token,
                installation_id=row.id,
                install_id=row.install_id,
                custom_id=row.custom_id,
                advertising_id=row.advertising_id,
                language=row.language,
                p256dh=row.webpush_p256dh,
                auth=row.webpush_auth,
                # Debug builds register with APNs' sandbox; so do raw tokens sent with sandbox.
                sandbox=ios and (row.is_dev or (send.sandbox and row.push_token in raw_tokens)),
            )
        for token in raw_tokens:
            if token not in devices:
                devices[token] = Recipient(token=token, sandbox=ios and send.sandbox)
        resolved.append(list(devices.values()))
    return resolved
