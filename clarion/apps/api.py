"""Admin API: a company (authenticated by its REST key) manages its apps, keys and credentials."""

from __future__ import annotations

from fastapi import APIRouter

from clarion.apps import service
from clarion.apps.schemas import (
    AllowedOriginsIn,
    ApnsCredentialsIn,
    AppCreate,
    AppCreated,
    AppKeys,
    AppRead,
    FcmCredentialsIn,
    WebPushCredentialsIn,
)
from clarion.formats import DbInt
from clarion.http import RestCompany, RuntimeDep, SessionDep

router = APIRouter(prefix="/admin/v1/apps", tags=["admin"])


@router.post("", status_code=201, response_model=AppCreated)
async def create_app(
    body: AppCreate, company: RestCompany, session: SessionDep, runtime: RuntimeDep
) -> AppRead:
    app, keys = await service.create_app(
        session, company_id=company.id, app_in=body, box=runtime.box
    )
    return service.describe_app(app, keys)


@router.get("", response_model=list[AppRead])
async def list_apps(company: RestCompany, session: SessionDep) -> list[AppRead]:
    return [
        service.describe_app(app)
        for app in await service.list_company_apps(session, company_id=company.id)
    ]


@router.get("/{app_id}", response_model=AppRead)
async def get_app(app_id: DbInt, company: RestCompany, session: SessionDep) -> AppRead:
    return service.describe_app(
        await service.get_company_app(session, company_id=company.id, app_id=app_id)
    )


@router.post("/{app_id}/keys/rotate", response_model=AppKeys)
async def rotate_keys(
    app_id: DbInt, company: RestCompany, session: SessionDep, runtime: RuntimeDep
) -> AppKeys:
    app = await service.get_company_app(session, company_id=company.id, app_id=app_id)
    return await service.rotate_app_keys(session, app=app, cache=runtime.key_cache)


@router.put("/{app_id}/credentials/apns", response_model=AppRead)
async def set_apns(
    app_id: DbInt,
    body: ApnsCredentialsIn,
    company: RestCompany,
    session: SessionDep,
    runtime: RuntimeDep,
) -> AppRead:
    app = await service.get_company_app(session, company_id=company.id, app_id=app_id)
    service.set_apns_credentials(app, body, runtime.box)
    return service.describe_app(app)


@router.put("/{app_id}/credentials/fcm", response_model=AppRead)
async def set_fcm(
    app_id: DbInt,
    body: FcmCredentialsIn,
    company: RestCompany,
    session: SessionDep,
    runtime: RuntimeDep,
) -> AppRead:
    app = await service.get_company_app(session, company_id=company.id, app_id=app_id)
    service.set_fcm_credentials(app, body, runtime.box)
    return service.describe_app(app)


@router.put("/{app_id}/credentials/webpush", response_model=AppRead)
async def set_webpush(
    app_id: DbInt,
    body: WebPushCredentialsIn,
    company: RestCompany,
    session: SessionDep,
    runtime: RuntimeDep,
) -> AppRead:
    app = await service.get_company_app(session, company_id=company.id, app_id=app_id)
    service.set_webpush_credentials(app, body, runtime.box)
    return service.describe_app(app)


@router.put("/{app_id}/allowed-origins", response_model=AppRead)
async def set_allowed_origins(
    app_id: DbInt,
    body: AllowedOriginsIn,
    company: RestCompany,
    session: SessionDep,
    runtime: RuntimeDep,
) -> AppRead:
    """The web pages (origins) that may call the SDK API with the app's key, replacing the
    list; a web app's only. See docs/web-sdk.md, "Serving and allowed origins"."""
    app = await service.get_company_app(session, company_id=company.id, app_id=app_id)
    service.set_allowed_origins(app, body.allowed_origins, runtime.key_cache)
    return service.describe_app(app)
