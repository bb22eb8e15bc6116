"""Import sources API and the audience file upload (Clarion additions to the Custom Audience
API), authenticated like it: the company's REST key in X-Authorization, the app's key in the
path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from clarion.audiences.models import AudienceKind
from clarion.db import utcnow
from clarion.formats import Text, wire_date
from clarion.http import RestAppLive, RuntimeDep, SessionDep
from clarion.imports import service
from clarion.imports.idfile import IdFileFormat
from clarion.imports.schemas import (
    Delimiter,
    ImportRunRead,
    ImportSourceIn,
    ImportSourceRead,
    ImportSourceUpdate,
    RunRequested,
    UploadResult,
)
from clarion.openapi import BINARY

router = APIRouter(tags=["flat-file imports"])
_SOURCES = "/1.0/{api_key}/imports"
_SOURCE = "/1.0/{api_key}/imports/{name}"
Name = Annotated[Text, Path(min_length=1, max_length=100)]


@router.post(_SOURCES, status_code=201)
async def create_source(
    body: ImportSourceIn, access: RestAppLive, session: SessionDep, runtime: RuntimeDep
) -> ImportSourceRead:
    source = await service.create_source(
        session,
        app_id=access.app_id,
        body=body,
        box=runtime.box,
        outbound=runtime.outbound,
        now=utcnow(),
    )
    return service.read_source(source)


@router.get(_SOURCES)
async def list_sources(access: RestAppLive, session: SessionDep) -> list[ImportSourceRead]:
    return await service.list_sources(session, app_id=access.app_id)


@router.get(_SOURCE)
async def view_source(name: Name, access: RestAppLive, session: SessionDep) -> ImportSourceRead:
    return await service.describe_source(session, app_id=access.app_id, name=name)


@router.patch(_SOURCE)
async def update_source(
    name: Name,
    body: ImportSourceUpdate,
    access: RestAppLive,
    session: SessionDep,
    runtime: RuntimeDep,
) -> ImportSourceRead:
    source = await service.update_source(
        session,
        app_id=access.app_id,
        name=name,
        body=body,
        box=runtime.box,
        outbound=runtime.outbound,
        now=utcnow(),
    )
    return service.read_source(source)


@router.delete(_SOURCE, status_code=204)
async def delete_source(name: Name, access: RestAppLive, session: SessionDep) -> Response:
    await service.delete_source(session, app_id=access.app_id, name=name)
    return Response(status_code=204)


@router.post(_SOURCE + "/run", status_code=202)
async def run_source(name: Name, access: RestAppLive, session: SessionDep) -> RunRequested:
    source = await service.request_run(session, app_id=access.app_id, name=name, now=utcnow())
    return RunRequested(name=source.name, next_poll=wire_date(source.next_poll_at))


@router.get(_SOURCE + "/runs")
async def list_runs(
    name: Name,
    access: RestAppLive,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[ImportRunRead]:
    return await service.list_runs(session, app_id=access.app_id, name=name, limit=limit)


@router.put(
    "/{version}/{api_key}/custom-audience/{name}/file",
    status_code=202,
    # The body is read as a stream, not a declared parameter: say what it is.
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A CSV file, one id a line (or the `column` of each row).",
            "content": {"text/csv": {"schema": BINARY}},
        }
    },
)
async def upload_audience(
    version: Annotated[str, Path(pattern=r"^1\.[01]$")],
    name: Annotated[Text, Path(min_length=1, max_length=255)],
    request: Request,
    access: RestAppLive,
    session: SessionDep,
    runtime: RuntimeDep,
    type: AudienceKind = AudienceKind.CUSTOM_IDS,
    header: bool = False,
    delimiter: Delimiter = ",",
    column: Annotated[Text, Query(min_length=1, max_length=255)] = "1",
) -> UploadResult:
    """Create or replace the audience with the ids of the body, a CSV file (streamed)."""
    return await service.upload_audience(
        session,
        app_id=access.app_id,
        name=name,
        format=IdFileFormat(kind=type, header=header, delimiter=delimiter, column=column),
        chunks=request.stream(),
        spool_dir=runtime.settings.var_dir / "spool",
        now=utcnow(),
    )
