"""Export destinations API (a Clarion addition; docs/exports.md), authenticated like the other
REST APIs: the company's REST key in X-Authorization, the app's key in the path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from clarion.db import utcnow
from clarion.exports import service
from clarion.exports.schemas import (
    DestinationIn,
    DestinationRead,
    DestinationUpdate,
    ExportRunRead,
)
from clarion.http import RestApp, RuntimeDep, SessionDep

router = APIRouter(tags=["daily exports"])
_DESTINATIONS = "/1.0/{api_key}/exports/destinations"
_DESTINATION = "/1.0/{api_key}/exports/destinations/{name}"
Name = Annotated[str, Path(min_length=1, max_length=100)]


@router.post(_DESTINATIONS, status_code=201)
async def create_destination(
    body: DestinationIn, access: RestApp, session: SessionDep, runtime: RuntimeDep
) -> DestinationRead:
    destination = await service.create_destination(
        session, app_id=access.app_id, body=body, box=runtime.box, now=utcnow()
    )
    return service.read_destination(destination)


@router.get(_DESTINATIONS)
async def list_destinations(access: RestApp, session: SessionDep) -> list[DestinationRead]:
    return await service.list_destinations(session, app_id=access.app_id)


@router.get(_DESTINATION)
async def view_destination(name: Name, access: RestApp, session: SessionDep) -> DestinationRead:
    return await service.describe_destination(session, app_id=access.app_id, name=name)


@router.patch(_DESTINATION)
async def update_destination(
    name: Name,
    body: DestinationUpdate,
    access: RestApp,
    session: SessionDep,
    runtime: RuntimeDep,
) -> DestinationRead:
    destination = await service.update_destination(
        session, app_id=access.app_id, name=name, body=body, box=runtime.box, now=utcnow()
    )
    return service.read_destination(destination)


@router.delete(_DESTINATION, status_code=204)
async def delete_destination(name: Name, access: RestApp, session: SessionDep) -> Response:
    await service.delete_destination(session, app_id=access.app_id, name=name)
    return Response(status_code=204)


@router.get(_DESTINATION + "/runs")
async def list_runs(
    name: Name,
    access: RestApp,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 31,
) -> list[ExportRunRead]:
    return await service.list_runs(session, app_id=access.app_id, name=name, limit=limit)
