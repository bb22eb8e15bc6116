"""Custom Data API 1.0 (spec §7): a company's systems set what they know about its users."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from clarion.custom_data import service
from clarion.custom_data.schemas import (
    DataAccepted,
    ProfileDeletesIn,
    ProfileUpdateIn,
    ProfileUpdatesIn,
)
from clarion.formats import Text
from clarion.http import RestAppLive, SessionDep

router = APIRouter(prefix="/1.0/{api_key}/data/users", tags=["custom data"])
CustomId = Annotated[Text, Path(min_length=1, max_length=512)]


@router.post("/{custom_id}")
async def update_user(
    custom_id: CustomId, body: ProfileUpdateIn, access: RestAppLive, session: SessionDep
) -> DataAccepted:
    updates = [(custom_id, body.overwrite, body.operations)]
    token = await service.update_profiles(session, app_id=access.app_id, updates=updates)
    return DataAccepted(token=token)


@router.post("")
async def update_users(
    body: ProfileUpdatesIn, access: RestAppLive, session: SessionDep
) -> DataAccepted:
    updates = [(item.id, item.update.overwrite, item.update.operations) for item in body.root]
    token = await service.update_profiles(session, app_id=access.app_id, updates=updates)
    return DataAccepted(token=token)


@router.delete("/{custom_id}")
async def delete_user(
    custom_id: CustomId, access: RestAppLive, session: SessionDep
) -> DataAccepted:
    token = await service.delete_profiles(session, app_id=access.app_id, custom_ids=[custom_id])
    return DataAccepted(token=token)


@router.delete("")
async def delete_users(
    body: ProfileDeletesIn, access: RestAppLive, session: SessionDep
) -> DataAccepted:
    token = await service.delete_profiles(session, app_id=access.app_id, custom_ids=body.root)
    return DataAccepted(token=token)
