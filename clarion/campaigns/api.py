"""Campaigns API 1.1 (spec §4), plus Clarion's audience estimate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse

from clarion.automations import service as automations
from clarion.campaigns import service
from clarion.campaigns.schemas import (
    CampaignBody,
    CampaignCreated,
    CampaignStats,
    CampaignSummary,
    EstimateIn,
)
from clarion.db import utcnow
from clarion.formats import INT64_MAX, Text
from clarion.http import RestApp, RestAppLive, SessionDep
from clarion.stats import service as stats
from clarion.stats.automations import MAX_STATS_DAYS, STATS_DAYS
from clarion.targeting.schemas import Estimate, Targeting

router = APIRouter(prefix="/1.1/{api_key}/campaigns", tags=["campaigns"])
Token = Annotated[Text, Path(max_length=64)]


@router.post("/create", status_code=201)
async def create_campaign(
    body: CampaignBody, access: RestApp, session: SessionDep
) -> CampaignCreated:
    now = utcnow()
    campaign = await service.create_campaign(session, access=access, body=body, now=now)
    await automations.settle_entries(session, campaign, now=now)
    return CampaignCreated(campaign_token=campaign.token)


@router.post("/update/{token}")
async def update_campaign(
    token: Token,
    changes: Annotated[dict[str, Any], Body()],
    access: RestApp,
    session: SessionDep,
) -> JSONResponse:
    now = utcnow()
    campaign = await service.update_campaign(
        session, access=access, token=token, changes=changes, now=now
    )
    await automations.settle_entries(session, campaign, now=now)
    return JSONResponse({"campaign_token": token})


@router.post("/delete/{token}")
async def delete_campaign(token: Token, access: RestApp, session: SessionDep) -> JSONResponse:
    now = utcnow()
    campaign = await service.delete_campaign(session, access=access, token=token, now=now)
    await automations.settle_entries(session, campaign, now=now)
    return JSONResponse({"campaign_token": token})


@router.get("/list")
async def list_campaigns(
    access: RestAppLive,
    session: SessionDep,
    from_: Annotated[int, Query(alias="from", ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    live: bool | None = None,
    from_api: bool | None = None,
) -> list[CampaignSummary]:
    return await service.list_campaigns(
        session, access=access, offset=from_, limit=limit, live=live, from_api=from_api
    )


@router.get("/stats/{token}", response_model_exclude_none=True)
async def campaign_stats(
    token: Token,
    access: RestAppLive,
    session: SessionDep,
    days: Annotated[
        int, Query(ge=1, le=MAX_STATS_DAYS, description="An automation's: days its figures cover")
    ] = STATS_DAYS,
) -> CampaignStats:
    """Batch's per-day figures; for an automation, Clarion adds `automation`: its entries
    finished in the last `days` days (sent, cancelled, skipped, with why) and pending now, its
    pushes, and its conversions."""
    return await stats.campaign_stats(session, access=access, token=token, automation_days=days)


@router.post("/estimate")
async def estimate_audience(body: EstimateIn, access: RestAppLive, session: SessionDep) -> Estimate:
    """Clarion's addition: how many installs a targeting reaches, without creating anything."""
    return await service.estimate_audience(
        session, access=access, targeting=body.targeting or Targeting(), now=utcnow()
    )


@router.get("/{token}")
async def get_campaign(token: Token, access: RestAppLive, session: SessionDep) -> dict[str, Any]:
    return await service.describe_campaign(session, access=access, token=token)
