"""Custom Audience API (spec §8): 1.0 by custom or advertising ids, 1.1 by install ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.service import AppAccess
from clarion.audiences import service
from clarion.audiences.schemas import (
    AudienceList,
    AudienceRead,
    IndexingAccepted,
    ReplaceV10,
    ReplaceV11,
    UpdateV10,
    UpdateV11,
)
from clarion.db import utcnow
from clarion.formats import INT64_MAX, Text
from clarion.http import RestAppLive, SessionDep

router = APIRouter(tags=["custom audiences"])
Name = Annotated[Text, Path(min_length=1, max_length=255)]
# One audience's URL, per version. Each is its own path in the OpenAPI document, which lists
# together the methods a URL takes (a `/{version}/` template beside `/1.0/` would split GET
# and DELETE from PUT and PATCH for the same URL).
_ONE_V10 = "/1.0/{api_key}/custom-audience/{name}"
_ONE_V11 = "/1.1/{api_key}/custom-audience/{name}"
Version = Annotated[str, Path(pattern=r"^1\.[01]$")]


@router.put(_ONE_V10, status_code=202)
async def replace_v10(
    name: Name, body: ReplaceV10, access: RestAppLive, session: SessionDep
) -> IndexingAccepted:
    return await _replace(name, body, access, session)


@router.put(_ONE_V11, status_code=202)
async def replace_v11(
    name: Name, body: ReplaceV11, access: RestAppLive, session: SessionDep
) -> IndexingAccepted:
    return await _replace(name, body, access, session)


@router.patch(_ONE_V10, status_code=202)
async def update_v10(
    name: Name, body: UpdateV10, access: RestAppLive, session: SessionDep
) -> IndexingAccepted:
    return await _update(name, body, access, session)


@router.patch(_ONE_V11, status_code=202)
async def update_v11(
    name: Name, body: UpdateV11, access: RestAppLive, session: SessionDep
) -> IndexingAccepted:
    return await _update(name, body, access, session)


async def _replace(
    name: str, body: ReplaceV10 | ReplaceV11, access: AppAccess, session: AsyncSession
) -> IndexingAccepted:
    token = await service.replace_audience(
        session,
        app_id=access.app_id,
        name=name,
        kind=body.kind,
        description=body.description,
        members=body.members(),
        now=utcnow(),
    )
    return IndexingAccepted(indexing_token=token)


async def _update(
    name: str, body: UpdateV10 | UpdateV11, access: AppAccess, session: AsyncSession
) -> IndexingAccepted:
    token = await service.update_audience(
        session,
        app_id=access.app_id,
        name=name,
        kind=body.kind,
        changes=body.changes(),
        now=utcnow(),
    )
    return IndexingAccepted(indexing_token=token)


@router.get("/{version}/{api_key}/custom-audience")
async def list_audiences(
    version: Version,
    access: RestAppLive,
    session: SessionDep,
    # The database's OFFSET is a 64-bit integer: past it, a 500 (found by the fuzzing run).
    from_: Annotated[int, Query(alias="from", ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> AudienceList:
    audiences = await service.list_audiences(
        session, app_id=access.app_id, offset=from_, limit=limit
    )
    return AudienceList(custom_audiences=audiences)


@router.get(_ONE_V10, response_model_exclude_none=True)
@router.get(_ONE_V11, response_model_exclude_none=True)
async def view_audience(
    name: Name,
    access: RestAppLive,
    session: SessionDep,
    indexing_token: Annotated[Text | None, Query(max_length=64)] = None,
) -> AudienceRead:
    return await service.describe_audience(
        session, app_id=access.app_id, name=name, indexing_token=indexing_token
    )


@router.delete(_ONE_V10)
@router.delete(_ONE_V11)
async def delete_audience(name: Name, access: RestAppLive, session: SessionDep) -> JSONResponse:
    await service.delete_audience(session, app_id=access.app_id, name=name)
    return JSONResponse({"name": name})
