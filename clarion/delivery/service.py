"""Delivery outside the workers: resolving recipients to installations, a send's progress
(batch_totals), stopping sends, the dashboard's test push. The workers themselves (claiming a
job's batches, sending, recording outcomes): clarion.delivery.tasks. See docs/architecture.md.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Select, String, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import Label
from sqlalchemy.types import TypeEngine

from clarion.apps.models import App
from clarion.db import in_values, uses_arrays
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
from clarion.sdk.models import Installation

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
    sent, resent (of sent, those sent again after an unknown outcome), failed and
    tokens_deleted (0 where there is none). A send's progress is its batches'."""
    columns = (
        BATCHES.c.targeted,
        BATCHES.c.sent,
        BATCHES.c.resent,
        BATCHES.c.failed,
        BATCHES.c.tokens_deleted,
    )
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
# Rows are read by position, in this order: a Row's attributes by name cost ~2.8 µs a row for
# these ten (~0.1 µs unpacked), measured; a push's whole budget is ~50 µs.
_ID, _PUSH_TOKEN, _INSTALL_ID, _CUSTOM_ID, _ADVERTISING_ID, *_, _IS_DEV, _APP_ID = range(
    len(_INSTALLATION_COLUMNS.selected_columns)
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
                by_custom_id[(row[_APP_ID], row[_IS_DEV], row[_CUSTOM_ID])].append(row)
    for (app_id, is_dev), values in install_ids.items():
        if values:
            params = {"app_id": app_id, "is_dev": is_dev, "values": list(values)}
            for row in await session.execute(lookups.by_install_id, params):
                by_install_id[(row[_APP_ID], row[_IS_DEV], row[_INSTALL_ID])] = row
    for (app_id, is_dev), values in advertising_ids.items():
        if values:
            params = {"app_id": app_id, "is_dev": is_dev, "values": list(values)}
            for row in await session.execute(lookups.by_advertising_id, params):
                by_advertising_id[(row[_APP_ID], row[_IS_DEV], row[_ADVERTISING_ID])].append(row)
    if installation_ids:
        for row in await session.execute(lookups.by_id, {"values": list(installation_ids)}):
            by_id[row[_ID]] = row
    for app_id, values in tokens.items():
        if values:
            params = {"app_id": app_id, "values": list(values)}
            for row in await session.execute(lookups.by_token, params):
                by_token[(row[_APP_ID], row[_PUSH_TOKEN])] = row

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
        app_id, ios, raw_sandbox = app.id, app.platform == "ios", send.sandbox
        devices: dict[str, Recipient] = {}
        for row in rows:
            if row is None:
                continue  # unknown
            pk, token, install_id, custom_id, advertising_id, language, p256dh, auth = row[:_IS_DEV]
            is_dev, of_app = row[_IS_DEV], row[_APP_ID]
            if token is None or of_app != app_id:
                continue  # its token was removed since the batch was written, or another app's
            devices[token] = Recipient(
                token,
                pk,
                install_id,
                custom_id,
                advertising_id,
                language,
                p256dh,
                auth,
                # Debug builds register with APNs' sandbox; so do raw tokens sent with sandbox.
                ios and (is_dev or (raw_sandbox and token in raw_tokens)),
            )
        for token in raw_tokens:
            if token not in devices:
                devices[token] = Recipient(token=token, sandbox=ios and send.sandbox)
        resolved.append(list(devices.values()))
    return resolved
