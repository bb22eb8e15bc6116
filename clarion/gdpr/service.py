"""GDPR requests: review (an archive of everything held on one id) and remove (delete it, and
ignore new data for that id for 30 days). Requests are answered at once and processed by the
worker processes (clarion.gdpr.tasks.process_pending), which then call the request's callback URL.

A review's archive holds everything about a person: it is readable by Clarion's user only
(0600, in a 0700 folder), served only to the app's company (REST key) and deleted once
CLARION_GDPR_ARCHIVE_DAYS have passed (clarion.gdpr.tasks.delete_expired_archives); the request
then says so."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import String, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.db import in_values, uses_arrays
from clarion.errors import MalformedParameterError, NotFoundError
from clarion.formats import IdType
from clarion.gdpr.models import BlockedId, GdprRequest, RequestStatus, RequestType
from clarion.gdpr.schemas import GdprRequestIn
from clarion.outbound import OutboundPolicy

log = logging.getLogger(__name__)

KEPT_FOR = timedelta(days=30)  # done requests are listed this long


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
