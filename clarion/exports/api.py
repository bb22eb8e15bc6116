"""Export destinations (a Clarion addition; docs/exports.md) and the on-demand Export API 1.0
(spec §11.1), authenticated like the other REST APIs: the company's REST key in
X-Authorization, the app's key in the path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.service import AppAccess
from clarion.db import utcnow
from clarion.errors import NotFoundError
from clarion.exports import service
from clarion.exports.models import RequestKind
from clarion.exports.schemas import (
    DestinationIn,
    DestinationRead,
    DestinationUpdate,
    ExportRequestCreated,
    ExportRequestIn,
    ExportRequestRead,
    ExportRunRead,
)
from clarion.formats import Text, wire_date
from clarion.http import RestAppLive, RuntimeDep, SessionDep
from clarion.openapi import BINARY

router = APIRouter(tags=["daily exports"])
_DESTINATIONS = "/1.0/{api_key}/exports/destinations"
_DESTINATION = "/1.0/{api_key}/exports/destinations/{name}"
Name = Annotated[Text, Path(min_length=1, max_length=100)]
Token = Annotated[Text, Path(min_length=1, max_length=64)]
FileName = Annotated[Text, Path(max_length=255)]


@router.post(_DESTINATIONS, status_code=201)
async def create_destination(
    body: DestinationIn, access: RestAppLive, session: SessionDep, runtime: RuntimeDep
) -> DestinationRead:
    destination = await service.create_destination(
        session,
        app_id=access.app_id,
        body=body,
        box=runtime.box,
        outbound=runtime.outbound,
        now=utcnow(),
    )
    return service.read_destination(destination)


@router.get(_DESTINATIONS)
async def list_destinations(access: RestAppLive, session: SessionDep) -> list[DestinationRead]:
    return await service.list_destinations(session, app_id=access.app_id)


@router.get(_DESTINATION)
async def view_destination(name: Name, access: RestAppLive, session: SessionDep) -> DestinationRead:
    return await service.describe_destination(session, app_id=access.app_id, name=name)


@router.patch(_DESTINATION)
async def update_destination(
    name: Name,
    body: DestinationUpdate,
    access: RestAppLive,
    session: SessionDep,
    runtime: RuntimeDep,
) -> DestinationRead:
    destination = await service.update_destination(
        session,
        app_id=access.app_id,
        name=name,
        body=body,
        box=runtime.box,
        outbound=runtime.outbound,
        now=utcnow(),
    )
    return service.read_destination(destination)


@router.delete(_DESTINATION, status_code=204)
async def delete_destination(name: Name, access: RestAppLive, session: SessionDep) -> Response:
    await service.delete_destination(session, app_id=access.app_id, name=name)
    return Response(status_code=204)


@router.get(_DESTINATION + "/runs")
async def list_runs(
    name: Name,
    access: RestAppLive,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 31,
) -> list[ExportRunRead]:
    return await service.list_runs(session, app_id=access.app_id, name=name, limit=limit)


# Export API 1.0 (spec §11.1): on-demand exports of a campaign's ids or events ---------------


@router.post("/1.0/{api_key}/export/campaign/{token}/ids", status_code=201)
async def export_campaign_ids(
    token: Token, body: ExportRequestIn, request: Request, access: RestAppLive, session: SessionDep
) -> ExportRequestCreated:
    return await _create(RequestKind.CAMPAIGN_IDS, token, body, request, access, session)


@router.post("/1.0/{api_key}/export/campaign/{token}/events", status_code=201)
async def export_campaign_events(
    token: Token, body: ExportRequestIn, request: Request, access: RestAppLive, session: SessionDep
) -> ExportRequestCreated:
    return await _create(RequestKind.CAMPAIGN_EVENTS, token, body, request, access, session)


@router.post("/1.0/{api_key}/export/inapp-campaign/{token}/events", status_code=201)
async def export_inapp_campaign_events(
    token: Token, body: ExportRequestIn, request: Request, access: RestAppLive, session: SessionDep
) -> ExportRequestCreated:
    return await _create(RequestKind.INAPP_CAMPAIGN_EVENTS, token, body, request, access, session)


@router.get("/1.0/{api_key}/export/request/{request_id}", response_model_exclude_none=True)
async def export_request_status(
    request_id: Token,
    request: Request,
    access: RestAppLive,
    session: SessionDep,
    runtime: RuntimeDep,
) -> ExportRequestRead:
    found = await service.get_request(
        session,
        access=access,
        request_id=request_id,
        var_dir=runtime.settings.var_dir,
        now=utcnow(),
    )
    file_url = None
    if found.status == "SUCCESS" and found.file_name:
        file_url = str(
            request.url_for(
                "export_request_file",
                api_key=request.path_params["api_key"],
                request_id=found.id,
                file_name=found.file_name,
            )
        )
    return ExportRequestRead(
        id=found.id,
        uri=found.uri,
        request_date=wire_date(found.created_at),
        file_url=file_url,
        status=found.status,
        completion_date=wire_date(found.completed_at) if found.completed_at else None,
        error=found.error,
        request=found.request,
    )


@router.get(
    "/1.0/{api_key}/export/request/{request_id}/results/{file_name}",
    name="export_request_file",
    response_class=FileResponse,
    responses={200: {"content": {"text/csv": {"schema": BINARY}}}},
)
async def export_request_file(
    request_id: Token,
    file_name: FileName,
    access: RestAppLive,
    session: SessionDep,
    runtime: RuntimeDep,
) -> FileResponse:
    found = await service.get_request(
        session,
        access=access,
        request_id=request_id,
        var_dir=runtime.settings.var_dir,
        now=utcnow(),
    )
    path = service.request_file(runtime.settings.var_dir, found)
    if path is None or found.file_name != file_name or not path.exists():
        raise NotFoundError(f"no file {file_name!r} for export request {request_id!r}")
    return FileResponse(path, media_type="text/csv; charset=utf-8", filename=file_name)


async def _create(
    kind: RequestKind,
    target: str,
    body: ExportRequestIn,
    request: Request,
    access: AppAccess,
    session: AsyncSession,
) -> ExportRequestCreated:
    request_id = await service.create_request(
        session,
        app_id=access.app_id,
        kind=kind,
        target=target,
        uri=request.url.path,
        body=body,
        now=utcnow(),
    )
    return ExportRequestCreated(id=request_id)
