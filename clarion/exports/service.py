"""Daily exports: destinations (CRUD), the days due, and Export API 1.0 requests. Producing each
(destination, day) exactly once, and the requested files: clarion.exports.tasks.

A day D is due for a destination once D has ended and the destination's delay has passed.
docs/exports.md.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.service import AppAccess
from clarion.db import utcnow
from clarion.errors import MalformedParameterError, NotFoundError
from clarion.exports.models import (
    ID_COLUMNS,
    ExportDestination,
    ExportKind,
    ExportRequest,
    ExportRun,
    ExportStatus,
    RequestKind,
    RequestStatus,
)
from clarion.exports.schemas import (
    CAMPAIGN_EVENTS,
    INAPP_EVENTS,
    DestinationIn,
    DestinationRead,
    DestinationUpdate,
    ExportRequestIn,
    ExportRunRead,
)
from clarion.formats import wire_date
from clarion.imports.service import change_credentials, check_location, seal_credentials
from clarion.outbound import OutboundPolicy
from clarion.security import SecretBox

log = logging.getLogger(__name__)

BACKFILL_DAYS = 31  # how far back missed days are produced without being asked

# Destinations ----------------------------------------------------------------------------------


async def create_destination(
    session: AsyncSession,
    *,
    app_id: int,
    body: DestinationIn,
    box: SecretBox,
    outbound: OutboundPolicy,
    now: datetime,
) -> ExportDestination:
    check_location(body.url, body.credentials, outbound)
    if await _find(session, app_id, body.name) is not None:
        raise MalformedParameterError(f"name: an export destination named {body.name!r} exists")
    destination = ExportDestination(
        app_id=app_id,
        credentials=seal_credentials(body.credentials, box),
        first_day=now.astimezone(UTC).date(),
        created_at=now,
        updated_at=now,
        **body.model_dump(exclude={"credentials"}),
    )
    session.add(destination)
    await session.flush()
    return destination


async def update_destination(
    session: AsyncSession,
    *,
    app_id: int,
    name: str,
    body: DestinationUpdate,
    box: SecretBox,
    outbound: OutboundPolicy,
    now: datetime,
) -> ExportDestination:
    check_location(body.url, body.credentials, outbound)
    destination = await _get(session, app_id, name)
    change_credentials(destination, body, box)
    for column, value in body.model_dump(exclude_unset=True, exclude={"credentials"}).items():
        if value is not None:
            setattr(destination, column, value)
    destination.updated_at = now
    return destination


async def delete_destination(session: AsyncSession, *, app_id: int, name: str) -> None:
    destination = await _get(session, app_id, name)
    await session.delete(destination)


async def list_destinations(session: AsyncSession, *, app_id: int | None) -> list[DestinationRead]:
    query = select(ExportDestination).order_by(ExportDestination.app_id, ExportDestination.name)
    if app_id is not None:
        query = query.where(ExportDestination.app_id == app_id)
    return [read_destination(d) for d in await session.scalars(query)]


async def describe_destination(session: AsyncSession, *, app_id: int, name: str) -> DestinationRead:
    return read_destination(await _get(session, app_id, name))


async def list_runs(
    session: AsyncSession, *, app_id: int, name: str, limit: int
) -> list[ExportRunRead]:
    """Newest day first."""
    destination = await _get(session, app_id, name)
    runs = await session.scalars(
        select(ExportRun)
        .where(ExportRun.destination_id == destination.id)
        .order_by(ExportRun.day.desc())
        .limit(limit)
    )
    return [read_run(run) for run in runs]


def read_destination(destination: ExportDestination) -> DestinationRead:
    return DestinationRead(
        name=destination.name,
        kind=destination.kind,
        url=destination.url,
        has_credentials=destination.credentials is not None,
        file_name=destination.file_name,
        gzip=destination.gzip,
        id_columns=destination.id_columns,
        delay_minutes=destination.delay_minutes,
        first_day=destination.first_day.isoformat(),
        enabled=destination.enabled,
        created=wire_date(destination.created_at),
        updated=wire_date(destination.updated_at),
    )


def read_run(run: ExportRun) -> ExportRunRead:
    return ExportRunRead(
        day=run.day.isoformat(),
        status=run.status,
        attempts=run.attempts,
        rows=run.rows,
        bytes=run.bytes,
        file=run.path,
        error=run.error,
        next_attempt=wire_date(run.next_attempt_at) if run.next_attempt_at else None,
        history=run.history or [],
        started=wire_date(run.started_at) if run.started_at else None,
        finished=wire_date(run.finished_at) if run.finished_at else None,
    )


async def pending_days(session: AsyncSession, *, app_id: int, name: str) -> list[date]:
    """The destination's due days not produced yet, oldest first (what a backfill runs)."""
    destination = await _get(session, app_id, name)
    done = set(
        await session.scalars(
            select(ExportRun.day).where(
                ExportRun.destination_id == destination.id,
                ExportRun.status == ExportStatus.SUCCEEDED.value,
            )
        )
    )
    return [day for day in due_days(destination, utcnow()) if day not in done]


def file_name(destination: ExportDestination, day: date) -> str:
    name = destination.file_name.format(
        app_id=destination.app_id,
        kind=destination.kind,
        date=day.strftime("%Y%m%d"),
        destination=destination.name,
    )
    return name + ".gz" if destination.gzip else name


def due_days(destination: ExportDestination, now: datetime) -> list[date]:
    """The days whose file is due by now: ended, delay passed, not before the first day, and
    at most BACKFILL_DAYS back."""
    latest = last_complete_day(now, destination.delay_minutes)
    earliest = max(destination.first_day, latest - timedelta(days=BACKFILL_DAYS - 1))
    return [earliest + timedelta(days=n) for n in range((latest - earliest).days + 1)]


def last_complete_day(now: datetime, delay_minutes: int) -> date:
    """The last UTC day D such that D's end plus the delay is not after `now`."""
    return (now.astimezone(UTC) - timedelta(minutes=delay_minutes)).date() - timedelta(days=1)


# What each kind of daily export reads, and the Export API requests that read the same log.
_REQUESTS_OF = {
    ExportKind.PUSH_EVENTS: (RequestKind.CAMPAIGN_EVENTS,),
    ExportKind.INAPP_EVENTS: (RequestKind.INAPP_CAMPAIGN_EVENTS,),
}


async def needed_from(session: AsyncSession, kind: ExportKind, now: datetime) -> date | None:
    """The first day of the `kind` event log that an export may still read (None: none), so
    that retention (clarion.retention) keeps it: for each destination of that kind, enabled or
    not (one re-enabled backfills), its oldest due day not produced yet, or else the first day
    not due yet; and the first day of each Export API request not produced yet."""
    needed: list[date] = []
    destinations = list(
        await session.scalars(select(ExportDestination).where(ExportDestination.kind == kind))
    )
    if destinations:
        produced = await session.execute(
            select(ExportRun.destination_id, ExportRun.day).where(
                ExportRun.destination_id.in_([d.id for d in destinations]),
                ExportRun.status == ExportStatus.SUCCEEDED.value,
                # due_days reaches BACKFILL_DAYS back from a day up to a week old (the delay).
                ExportRun.day >= last_complete_day(now, 0) - timedelta(BACKFILL_DAYS + 8),
            )
        )
        done = {(destination_id, day) for destination_id, day in produced}
    for destination in destinations:
        due = [day for day in due_days(destination, now) if (destination.id, day) not in done]
        upcoming = last_complete_day(now, destination.delay_minutes) + timedelta(days=1)
        needed.append(max(destination.first_day, min([*due, upcoming])))
    requested = await session.scalar(
        select(func.min(ExportRequest.date_from)).where(
            ExportRequest.kind.in_(_REQUESTS_OF.get(kind, ())),
            ExportRequest.status.in_((RequestStatus.CREATED.value, RequestStatus.PENDING.value)),
        )
    )
    if requested is not None:
        needed.append(requested.astimezone(UTC).date())
    return min(needed, default=None)


# Producing files -------------------------------------------------------------------------------


def parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise MalformedParameterError(f"day: {value!r} is not a date (YYYY-MM-DD)") from None


async def _find(session: AsyncSession, app_id: int, name: str) -> ExportDestination | None:
    return await session.scalar(
        select(ExportDestination).where(
            ExportDestination.app_id == app_id, ExportDestination.name == name
        )
    )


async def _get(session: AsyncSession, app_id: int, name: str) -> ExportDestination:
    destination = await _find(session, app_id, name)
    if destination is None:
        raise NotFoundError(f"no export destination {name!r}")
    return destination


# Export API 1.0 (spec §11.1) -------------------------------------------------------------------

FILE_LIFETIME = timedelta(days=30)  # Batch: "files live for one month"


async def create_request(
    session: AsyncSession,
    *,
    app_id: int,
    kind: RequestKind,
    target: str,
    uri: str,
    body: ExportRequestIn,
    now: datetime,
) -> str:
    start = _export_date(body.from_, "from", now)
    end = _export_date(body.to, "to", now)
    if start > end:
        raise MalformedParameterError("from: after to")
    names = INAPP_EVENTS if kind is RequestKind.INAPP_CAMPAIGN_EVENTS else CAMPAIGN_EVENTS
    asked = body.events or list(dict.fromkeys(names.values()))
    unknown = [name for name in asked if name not in names]
    if unknown:
        raise MalformedParameterError(
            f"events: unknown event {unknown[0]!r} (use {', '.join(names)})"
        )
    request = ExportRequest(
        id=str(uuid.uuid4()),
        app_id=app_id,
        kind=kind.value,
        target=target,
        uri=uri,
        date_from=start,
        date_to=end,
        request=body.model_dump(by_alias=True, exclude_none=True),
        events=sorted({names[name] for name in asked}),
        ids=body.ids or list(ID_COLUMNS),
        status=RequestStatus.CREATED.value,
        created_at=now,
    )
    session.add(request)
    return request.id


async def get_request(
    session: AsyncSession, *, access: AppAccess, request_id: str, var_dir: Path, now: datetime
) -> ExportRequest:
    """A request of the app; expired if a month old."""
    request = await session.get(ExportRequest, request_id)
    if request is None or request.app_id != access.app_id:
        raise NotFoundError(f"no export request {request_id!r}")
    if request.status == RequestStatus.SUCCESS.value and now - request.created_at > FILE_LIFETIME:
        request.status = RequestStatus.EXPIRED.value
        path = request_file(var_dir, request)
        if path is not None:
            path.unlink(missing_ok=True)
    return request


def request_file(var_dir: Path, request: ExportRequest) -> Path | None:
    if request.file_name is None:
        return None
    return var_dir / "export-requests" / request.file_name


def _export_date(value: str, field: str, now: datetime) -> datetime:
    if value == "now":
        return now
    for layout in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise MalformedParameterError(f'{field}: {value!r} is not "now" or a UTC date')
