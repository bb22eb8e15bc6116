"""In-App Campaigns API 1.1 (spec §6), the admin API's themes, and the SDK's fetch of the
messages due for an installation (docs/inapp.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response

from clarion.apps.service import get_company_app
from clarion.db import utcnow
from clarion.errors import NotFoundError
from clarion.formats import INT64_MAX, DbInt, Text
from clarion.http import RestApp, RestAppLive, RestCompany, SessionDep
from clarion.inapp import service
from clarion.inapp.schemas import (
    THEME_CODE,
    InAppCampaignBody,
    InAppCampaignCreated,
    InAppCampaignSummary,
    InAppStats,
    ThemeBody,
    ThemeRead,
)

router = APIRouter(prefix="/1.1/{api_key}/in-app-campaigns", tags=["in-app"])
themes_router = APIRouter(prefix="/admin/v1/apps/{app_id}/inapp-themes", tags=["admin"])
sdk_router = APIRouter(prefix="/sdk/v1/{api_key}", tags=["sdk"])
Token = Annotated[Text, Path(max_length=64)]
ThemeCode = Annotated[str, Path(pattern=THEME_CODE, max_length=64)]


@router.post("/create", status_code=201)
async def create_campaign(
    body: InAppCampaignBody, access: RestApp, session: SessionDep
) -> InAppCampaignCreated:
    campaign = await service.create_campaign(session, access=access, body=body, now=utcnow())
    return InAppCampaignCreated(campaign_token=campaign.token)


@router.post("/update/{token}")
async def update_campaign(
    token: Token,
    changes: Annotated[dict[str, Any], Body()],
    access: RestApp,
    session: SessionDep,
) -> InAppCampaignCreated:
    await service.update_campaign(
        session, access=access, token=token, changes=changes, now=utcnow()
    )
    return InAppCampaignCreated(campaign_token=token)


@router.post("/delete/{token}")
async def delete_campaign(
    token: Token, access: RestApp, session: SessionDep
) -> InAppCampaignCreated:
    await service.delete_campaign(session, access=access, token=token, now=utcnow())
    return InAppCampaignCreated(campaign_token=token)


@router.get("/list")
async def list_campaigns(
    access: RestAppLive,
    session: SessionDep,
    from_: Annotated[int, Query(alias="from", ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    live: bool | None = None,
    from_api: bool | None = None,
) -> list[InAppCampaignSummary]:
    return await service.list_campaigns(
        session, access=access, offset=from_, limit=limit, live=live, from_api=from_api
    )


@router.get("/stats/{token}", response_model_exclude_none=True)
async def campaign_stats(token: Token, access: RestAppLive, session: SessionDep) -> InAppStats:
    return await service.campaign_stats(session, access=access, token=token)


@router.get("/{token}")
async def get_campaign(token: Token, access: RestAppLive, session: SessionDep) -> dict[str, Any]:
    return await service.describe_campaign(session, access=access, token=token)


# Themes (admin API: the company's REST key, one of its apps) ------------------------------------


@themes_router.get("")
async def list_themes(app_id: DbInt, company: RestCompany, session: SessionDep) -> list[ThemeRead]:
    await get_company_app(session, company_id=company.id, app_id=app_id)
    return list((await service.themes(session, app_id=app_id)).values())


@themes_router.get("/{code}")
async def get_theme(
    app_id: DbInt, code: ThemeCode, company: RestCompany, session: SessionDep
) -> ThemeRead:
    await get_company_app(session, company_id=company.id, app_id=app_id)
    found = (await service.themes(session, app_id=app_id)).get(code)
    if found is None:
        raise NotFoundError(f"no in-app theme {code!r}")
    return found


@themes_router.put("/{code}")
async def put_theme(
    app_id: DbInt, code: ThemeCode, body: ThemeBody, company: RestCompany, session: SessionDep
) -> ThemeRead:
    await get_company_app(session, company_id=company.id, app_id=app_id)
    return await service.put_theme(session, app_id=app_id, code=code, body=body, now=utcnow())


@themes_router.delete("/{code}", status_code=204)
async def delete_theme(
    app_id: DbInt, code: ThemeCode, company: RestCompany, session: SessionDep
) -> Response:
    await get_company_app(session, company_id=company.id, app_id=app_id)
    await service.delete_theme(session, app_id=app_id, code=code)
    return Response(status_code=204)
