"""What runs in the background for GDPR requests: process_pending answers the pending ones (a
review's archive, a removal) and calls their callback URL; delete_expired_archives deletes the
archives older than CLARION_GDPR_ARCHIVE_DAYS. clarion.runtime starts both."""

from __future__ import annotations

import asyncio
import logging
import os
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy import ColumnElement, Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.audiences.models import Audience, AudienceKind, AudienceMember
from clarion.audiences.resolved import installations_changed
from clarion.automations.models import AutomationEntry
from clarion.custom_data.models import ProfileAttribute, ProfileTag
from clarion.db import Base, transaction, upsert_insert, utcnow
from clarion.events.models import InAppEvent, PushEvent, TrackedEvent
from clarion.formats import IdType
from clarion.gdpr.models import BlockedId, GdprRequest, RequestStatus, RequestType
from clarion.gdpr.service import archive_folder
from clarion.health import beat
from clarion.outbound import DestinationRefused, WebhookClient
from clarion.sdk.models import Installation

log = logging.getLogger(__name__)

BLOCKED_FOR = timedelta(days=30)  # new data for a removed id is ignored this long
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
        AutomationEntry,
    )
}


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
        beat()  # many archives to delete is progress (clarion.health)
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
        beat()  # a request removing a large user's data is progress (clarion.health)
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
    # An automation's entries name the user as its events do (and hold the trigger event).
    for model in (Installation, PushEvent, InAppEvent, TrackedEvent, AutomationEntry):
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
