"""GDPR requests: review (an archive of everything held on one id) and remove (delete it, and
ignore new data for that id for 30 days). Requests are answered at once and processed by the
worker processes (`process_pending`), which then call the request's callback URL.

A review's archive holds everything about a person: it is readable by Clarion's user only
(0600, in a 0700 folder), served only to the app's company (REST key) and deleted once
CLARION_GDPR_ARCHIVE_DAYS have passed (`delete_expired_archives`); the request then says so."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
import zipfile
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy import ColumnElement, Select, String, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.audiences.models import Audience, AudienceKind, AudienceMember
from clarion.audiences.resolved import installations_changed
from clarion.custom_data.models import ProfileAttribute, ProfileTag
from clarion.db import Base, in_values, transaction, upsert_insert, uses_arrays, utcnow
from clarion.errors import MalformedParameterError, NotFoundError
from clarion.events.models import InAppEvent, PushEvent, TrackedEvent
from clarion.gdpr.models import BlockedId, GdprRequest, IdType, RequestStatus, RequestType
from clarion.gdpr.schemas import GdprRequestIn
from clarion.outbound import DestinationRefused, OutboundPolicy, WebhookClient
from clarion.sdk.models import Installation

log = logging.getLogger(__name__)

BLOCKED_FOR = timedelta(days=30)  # new data for a removed id is ignored this long
KEPT_FOR = timedelta(days=30)  # done requests are listed this long
# How often a worker deletes expired archives: one outlives its retention on disk by at most
# this long (reads and downloads stop at the expiry itself).
ARCHIVE_CHECK_SECONDS = 3600.0
_ARCHIVE_BATCH = 500
USER_NOT_FOUND = "user not found"
_AUDIENCE_KIND = {
    IdType.CUSTOM_ID: AudienceKind.CUSTOM_IDS,
    IdType.INSTALL_ID: AudienceKind.INSTALL_IDS,
    IdType.ADVERTISING_ID: AudienceKind.ADVERTISING_IDS,
}


async def create_request(
    session: AsyncSession,
    *,
    app_id: int,
    body: GdprRequestIn,
    outbound: OutboundPolicy,
    now: datetime,
) -> str:
    if body.callback_url is not None:
        # What the URL alone tells; the address its host resolves to is checked on calling.
        refusal = outbound.url_refusal(body.callback_url, https_only=True)
        if refusal is not None:
            raise MalformedParameterError(f"callback_url: {refusal}")
    request = GdprRequest(
        id=str(uuid.uuid4()),
        app_id=app_id,
        request_type=body.request_type.value,
        id_type=body.id.type.value,
        id_value=body.id.value,
        callback_url=body.callback_url,
        status=RequestStatus.PENDING.value,
        created_at=now,
    )
    session.add(request)
    return request.id


async def get_request(session: AsyncSession, *, app_id: int, request_id: str) -> GdprRequest:
    request = await session.get(GdprRequest, request_id)
    if request is None or request.app_id != app_id:
        raise NotFoundError(f"no GDPR request {request_id!r}")
    return request


async def list_requests(session: AsyncSession, *, app_id: int, now: datetime) -> list[GdprRequest]:
    """Newest first; done requests older than KEPT_FOR are left out, pending ones never."""
    return list(
        await session.scalars(
            select(GdprRequest)
            .where(
                GdprRequest.app_id == app_id,
                or_(
                    GdprRequest.status == RequestStatus.PENDING.value,
                    GdprRequest.created_at >= now - KEPT_FOR,
                ),
            )
            .order_by(GdprRequest.created_at.desc())
        )
    )


def archive_path(var_dir: Path, request: GdprRequest) -> Path | None:
    if request.archive is None:
        return None
    return var_dir / "gdpr" / request.archive


def archive_expiry(request: GdprRequest, retention: timedelta) -> datetime | None:
    """When a review's archive is (or was) deleted; None for requests without one (a removal,
    a review of an unknown user, a pending one). A done review without error had an archive:
    with `archive` unset, it has been deleted."""
    if (
        request.request_type != RequestType.REVIEW.value
        or request.done_at is None
        or request.error is not None
    ):
        return None
    return request.done_at + retention


def archive_folder(var_dir: Path) -> Path:
    """The archives' folder, made (or, made wider by an earlier version, set) owner-only: the
    files in it cannot be reached by others whatever their own mode."""
    folder = var_dir / "gdpr"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


async def delete_expired_archives(
    sessions: async_sessionmaker[AsyncSession],
    *,
    var_dir: Path,
    retention: timedelta,
    clock: Callable[[], datetime] = utcnow,
) -> int:
    """Delete the archives of reviews done `retention` ago or more; returns how many. Files go
    first, then the rows forget them: a crash in between leaves rows whose files are gone,
    deleted again (as missing) at the next run."""
    deleted = 0
    folder = await asyncio.to_thread(archive_folder, var_dir)
    while True:
        async with sessions() as session:
            due = (
                await session.execute(
                    select(GdprRequest.id, GdprRequest.archive)
                    .where(
                        GdprRequest.archive.is_not(None),
                        GdprRequest.done_at <= clock() - retention,
                    )
                    .limit(_ARCHIVE_BATCH)
                )
            ).all()
        if not due:
            return deleted
        await asyncio.to_thread(_unlink, [folder / name for _, name in due if name])
        async with transaction(sessions) as session:
            await session.execute(
                update(GdprRequest)
                .where(GdprRequest.id.in_([request_id for request_id, _ in due]))
                .values(archive=None)
            )
        deleted += len(due)


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


async def blocked_identities(
    session: AsyncSession, *, app_id: int, ids: dict[IdType, str | None], now: datetime
) -> set[IdType]:
    """Which of one device's identities (install id, custom id, advertising id) a GDPR removal
    blocks now, in one query."""
    given = [(kind, value) for kind, value in ids.items() if value is not None]
    if not given:
        return set()
    found = await session.scalars(
        select(BlockedId.id_type).where(
            BlockedId.app_id == app_id,
            BlockedId.until > now,
            or_(
                *(
                    (BlockedId.id_type == kind.value) & (BlockedId.id_value == value)
                    for kind, value in given
                )
            ),
        )
    )
    return {IdType(kind) for kind in found}


async def blocked_values(
    session: AsyncSession, *, app_id: int, id_type: IdType, values: Iterable[str], now: datetime
) -> set[str]:
    """Those of `values` a GDPR removal blocks now: data arriving for them is ignored."""
    wanted = list(set(values))
    if not wanted:
        return set()
    # Bulk calls carry 10,000 ids and almost no app has a blocked one: ask that first.
    any_blocked = await session.scalar(
        select(BlockedId.id_value)
        .where(
            BlockedId.app_id == app_id,
            BlockedId.id_type == id_type.value,
            BlockedId.until > now,
        )
        .limit(1)
    )
    if any_blocked is None:
        return set()
    return set(
        await session.scalars(
            select(BlockedId.id_value).where(
                BlockedId.app_id == app_id,
                BlockedId.id_type == id_type.value,
                in_values(BlockedId.id_value, "values", String(), array=uses_arrays(session)),
                BlockedId.until > now,
            ),
            {"values": wanted},
        )
    )


async def process_pending(
    sessions: async_sessionmaker[AsyncSession],
    *,
    var_dir: Path,
    client: WebhookClient,
    limit: int = 10,
) -> int:
    """Process pending requests (each in its own transaction, rows locked so that several
    processes share the work); returns how many were done. Callbacks follow each commit."""
    done = 0
    while done < limit:
        async with transaction(sessions) as session:
            request = await session.scalar(
                select(GdprRequest)
                .where(GdprRequest.status == RequestStatus.PENDING.value)
                .order_by(GdprRequest.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if request is None:
                return done
            now = utcnow()
            found = await _holdings(session, request)
            if not any(found.values()):
                request.error = USER_NOT_FOUND
            elif request.request_type == RequestType.REVIEW.value:
                request.archive = await asyncio.to_thread(_write_archive, var_dir, request, found)
            else:
                await _remove(session, request, now)
            request.status = RequestStatus.DONE.value
            request.done_at = now
            callback = request.callback_url
            payload = {
                "request_id": request.id,
                "request_type": request.request_type,
                "status": request.status,
                "error": request.error,
                "id": {"type": request.id_type, "value": request.id_value},
            }
        done += 1
        if callback:
            await _call_back(client, callback, payload)
    return done


def _matches(request: GdprRequest) -> dict[str, ColumnElement[bool]]:
    """Per table, the rows that belong to the request's id."""
    app_id, value = request.app_id, request.id_value
    column = {
        IdType.CUSTOM_ID: "custom_id",
        IdType.INSTALL_ID: "install_id",
        IdType.ADVERTISING_ID: "advertising_id",
    }[IdType(request.id_type)]
    matches: dict[str, ColumnElement[bool]] = {}
    model: type[Any]
    for model in (Installation, PushEvent, InAppEvent, TrackedEvent):
        if hasattr(model, column):
            matches[model.__tablename__] = (model.app_id == app_id) & (
                getattr(model, column) == value
            )
    if request.id_type == IdType.CUSTOM_ID:
        for model in (ProfileAttribute, ProfileTag):
            matches[model.__tablename__] = (model.app_id == app_id) & (model.custom_id == value)
    kind = _AUDIENCE_KIND[IdType(request.id_type)]
    audiences = select(Audience.id).where(Audience.app_id == app_id, Audience.kind == kind.value)
    matches[AudienceMember.__tablename__] = AudienceMember.audience_id.in_(
        audiences.scalar_subquery()
    ) & (AudienceMember.member_id == value)
    return matches


_MODELS: dict[str, type[Base]] = {
    model.__tablename__: model
    for model in (
        Installation,
        PushEvent,
        InAppEvent,
        TrackedEvent,
        ProfileAttribute,
        ProfileTag,
        AudienceMember,
    )
}


async def _holdings(session: AsyncSession, request: GdprRequest) -> dict[str, list[dict[str, Any]]]:
    """Every row held on the request's id, per table, as plain values."""
    found: dict[str, list[dict[str, Any]]] = {}
    for table, condition in _matches(request).items():
        model = _MODELS[table]
        statement: Select[Any] = select(model).where(condition)
        found[table] = [_plain(row) for row in await session.scalars(statement)]
    return found


async def _remove(session: AsyncSession, request: GdprRequest, now: datetime) -> None:
    matches = _matches(request)
    # Their audience memberships through this id go below; their bits are cleared at the end.
    # (An installation removed by its install id leaves bits that no installation answers to.)
    linked = list(
        await session.scalars(select(Installation.id).where(matches[Installation.__tablename__]))
    )
    if request.id_type == IdType.CUSTOM_ID:
        # The installs stay (they are devices, not the user); their link to the user goes.
        await session.execute(
            update(Installation)
            .where(matches.pop(Installation.__tablename__))
            .values(custom_id=None)
        )
    elif request.id_type == IdType.ADVERTISING_ID:
        await session.execute(
            update(Installation)
            .where(matches.pop(Installation.__tablename__))
            .values(advertising_id=None)
        )
    member_of = matches[AudienceMember.__tablename__]
    affected = list(
        await session.scalars(select(AudienceMember.audience_id).where(member_of).distinct())
    )
    for table, condition in matches.items():
        await session.execute(delete(_MODELS[table]).where(condition))
    for audience_id in affected:
        members = (
            select(func.count())
            .select_from(AudienceMember)
            .where(
                AudienceMember.audience_id == audience_id,
                AudienceMember.generation == Audience.generation,
            )
            .scalar_subquery()
        )
        await session.execute(
            update(Audience).where(Audience.id == audience_id).values(nb_ids=members)
        )
    await installations_changed(session, app_id=request.app_id, installation_ids=linked)
    insert = upsert_insert(session, BlockedId)
    await session.execute(
        insert.values(
            app_id=request.app_id,
            id_type=request.id_type,
            id_value=request.id_value,
            until=now + BLOCKED_FOR,
        ).on_conflict_do_update(
            index_elements=["app_id", "id_type", "id_value"], set_={"until": now + BLOCKED_FOR}
        )
    )


def _write_archive(
    var_dir: Path, request: GdprRequest, found: dict[str, list[dict[str, Any]]]
) -> str:
    """A zip of one JSON file per table holding rows on the id, readable by its owner only;
    returns its file name."""
    name = f"{request.id}.zip"
    descriptor = os.open(
        archive_folder(var_dir) / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
    )
    os.fchmod(descriptor, 0o600)  # a file left by an interrupted attempt keeps its mode otherwise
    with (
        os.fdopen(descriptor, "wb") as file,
        zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        archive.writestr(
            "request.json",
            orjson.dumps(
                {"id": {"type": request.id_type, "value": request.id_value}},
                option=orjson.OPT_INDENT_2,
            ),
        )
        for table, rows in found.items():
            if rows:
                archive.writestr(f"{table}.json", orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    return name


def _plain(row: Base) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__mapper__.column_attrs}


async def _call_back(client: WebhookClient, url: str, payload: dict[str, Any]) -> None:
    # The request stays readable by id: a lost callback loses no data.
    try:
        status = await client.post_json(url, payload)
    except DestinationRefused as exc:
        log.warning("GDPR callback to %s refused by the outbound policy: %s", url, exc)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("GDPR callback to %s failed: %s", url, exc)
    else:
        if status >= 300:  # redirects are not followed: the URL is the one given
            log.warning("GDPR callback to %s failed: HTTP %s", url, status)
