"""SDK API: what apps and web pages call with their app key. Reference: docs/sdk-api.md."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from clarion.errors import NotFoundError
from clarion.formats import Text
from clarion.http import RuntimeDep, SdkApp, SessionDep
from clarion.sdk import service
from clarion.sdk.schemas import (
    Accepted,
    AppOpenIn,
    CustomIdSet,
    InAppEventsIn,
    InstallationRead,
    InstallationUpsert,
    PushOpenIn,
    TrackedEventsIn,
    VapidKey,
)

router = APIRouter(prefix="/sdk/v1/{api_key}", tags=["sdk"])
InstallId = Annotated[Text, Path(max_length=128)]


@router.put("/installations/{install_id}", response_model=InstallationRead)
async def put_installation(
    install_id: InstallId,
    body: InstallationUpsert,
    access: SdkApp,
    session: SessionDep,
    runtime: RuntimeDep,
) -> InstallationRead:
    installation = await service.upsert_installation(
        session, access=access, install_id=install_id, data=body, outbound=runtime.outbound
    )
    return InstallationRead.model_validate(installation)


@router.put("/installations/{install_id}/custom_id", response_model=InstallationRead)
async def attach_custom_id(
    install_id: InstallId, body: CustomIdSet, access: SdkApp, session: SessionDep
) -> InstallationRead:
    installation = await service.set_custom_id(
        session, access=access, install_id=install_id, custom_id=body.custom_id
    )
    return InstallationRead.model_validate(installation)


@router.delete("/installations/{install_id}/custom_id", response_model=InstallationRead)
async def detach_custom_id(
    install_id: InstallId, access: SdkApp, session: SessionDep
) -> InstallationRead:
    installation = await service.set_custom_id(
        session, access=access, install_id=install_id, custom_id=None
    )
    return InstallationRead.model_validate(installation)


@router.post("/installations/{install_id}/events", response_model=Accepted, status_code=202)
async def track_events(
    install_id: InstallId, body: TrackedEventsIn, access: SdkApp, session: SessionDep
) -> Accepted:
    count = await service.track_events(session, access=access, install_id=install_id, data=body)
    return Accepted(accepted=count)


@router.post("/installations/{install_id}/app-opens", response_model=Accepted, status_code=202)
async def report_app_open(
    install_id: InstallId, body: AppOpenIn, access: SdkApp, session: SessionDep
) -> Accepted:
    await service.record_app_open(session, access=access, install_id=install_id, data=body)
    return Accepted(accepted=1)


@router.post("/installations/{install_id}/opens", response_model=Accepted, status_code=202)
async def report_push_open(
    install_id: InstallId, body: PushOpenIn, access: SdkApp, session: SessionDep
) -> Accepted:
    await service.record_push_open(session, access=access, install_id=install_id, data=body)
    return Accepted(accepted=1)


@router.post("/installations/{install_id}/inapp-events", response_model=Accepted, status_code=202)
async def report_inapp_events(
    install_id: InstallId, body: InAppEventsIn, access: SdkApp, session: SessionDep
) -> Accepted:
    count = await service.record_inapp(session, access=access, install_id=install_id, data=body)
    return Accepted(accepted=count)


@router.get("/webpush/vapid-key", response_model=VapidKey)
async def get_vapid_key(access: SdkApp) -> VapidKey:
    if access.vapid_public_key is None:
        raise NotFoundError("this app has no Web Push key")
    return VapidKey(application_server_key=access.vapid_public_key)
