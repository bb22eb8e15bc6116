"""Campaigns: list, editor (with the live audience estimate and preview), analytics.

The editor's form is read into a Campaigns API document (schemas.campaign_document) and goes
through the same service calls as the API, so its rules and messages are the API's.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.models import App
from clarion.apps.service import AppAccess
from clarion.audiences import service as audiences_service
from clarion.automations import service as automations
from clarion.campaigns import service as campaigns
from clarion.campaigns.schemas import EstimateIn
from clarion.dashboard import analytics, service
from clarion.dashboard.schemas import (
    QUERY_FIELD_SUGGESTIONS,
    QUERY_OPERATORS,
    SEGMENTS,
    campaign_document,
    campaign_form,
    carry_hidden_fields,
    targeting_document,
)
from clarion.dashboard.service import Viewer
from clarion.dashboard.web import (
    CampaignToken,
    PageNumber,
    PageRoute,
    ViewerDep,
    fragment,
    page_window,
    paged,
    redirect,
    render,
    validated,
)
from clarion.db import utcnow
from clarion.errors import ClarionError
from clarion.formats import DbInt, Text
from clarion.http import SessionDep
from clarion.stats import service as campaign_statistics
from clarion.targeting.schemas import Targeting

router = APIRouter(route_class=PageRoute)

# The editor offers this many of the app's audiences as checkboxes (newest first).
AUDIENCE_CHOICES = 200
_NOTICES = {
    "created": "Campaign saved as a draft.",
    "saved": "Campaign saved.",
    "live": "Campaign saved and live.",
    "stopped": "Campaign stopped.",
}
_BLANK_FORM: dict[str, Any] = campaign_form(
    {"messages": [{"language": "default", "body": ""}], "push_time": "now"}
)


@router.get("/apps/{app_id}/campaigns")
async def list_campaigns(
    request: Request,
    app_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    state: Annotated[Text, Query(max_length=32)] = "all",
    origin: Annotated[Text, Query(max_length=32)] = "all",
    q: Annotated[Text, Query(max_length=256)] = "",
    page: PageNumber = 1,
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    found = await campaigns.list_campaigns(
        session,
        access=access,
        **page_window(page),
        live={"live": True, "draft": False}.get(state),
        from_api={"api": True, "dashboard": False}.get(origin),
        name_contains=q.strip(),
        automation=False,  # automations have their own tab (automation_pages)
    )
    return await render(
        request,
        session,
        viewer,
        "campaigns.html",
        app=app,
        section="campaigns",
        **paged("campaigns", found, page),
        filters={"state": state, "origin": origin, "q": q},
    )


@router.get("/apps/{app_id}/campaigns/new")
async def new_campaign(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    return await _editor(request, session, viewer, app, access, form=_BLANK_FORM)


@router.post("/apps/{app_id}/campaigns")
async def create_campaign(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    app, access = await service.company_app(session, viewer, app_id)
    form = await request.form()
    live = form.get("action") == "live"
    document = campaign_document(form, live=live)
    try:
        now = utcnow()
        campaign = await campaigns.create_campaign(
            session,
            access=access,
            body=campaigns.validate_body(document),
            now=now,
            from_api=False,
        )
        await automations.settle_entries(session, campaign, now=now)
    except ClarionError as exc:
        await session.rollback()  # a refused change leaves nothing behind
        return await _editor(
            request,
            session,
            viewer,
            app,
            access,
            form=campaign_form(document),
            error=exc.message,
            status=exc.status,
        )
    notice = "live" if live else "created"
    return redirect(f"/dashboard/apps/{app_id}/campaigns/{campaign.token}?notice={notice}")


@router.get("/apps/{app_id}/campaigns/{token}")
async def edit_campaign(
    request: Request,
    app_id: DbInt,
    token: CampaignToken,
    viewer: ViewerDep,
    session: SessionDep,
    notice: str = "",
) -> Response:
    app, access = await service.company_app(session, viewer, app_id)
    stored = await campaigns.describe_campaign(session, access=access, token=token)
    if isinstance(stored.get("trigger"), dict):  # an automation: its own pages
        return redirect(f"/dashboard/apps/{app_id}/automations/{token}/edit")
    return await _editor(
        request,
        session,
        viewer,
        app,
        access,
        form=campaign_form(stored),
        campaign=stored,
        notice=_NOTICES.get(notice, ""),
    )


@router.post("/apps/{app_id}/campaigns/{token}")
async def save_campaign(
    request: Request, app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> Response:
    """Save the editor (action draft, live or keep), or stop the campaign (action stop)."""
    service.require_editor(viewer)
    app, access = await service.company_app(session, viewer, app_id)
    form = await request.form()
    action = form.get("action")
    if action == "stop":
        now = utcnow()
        stopped = await campaigns.set_offline(session, access=access, token=token, now=now)
        await automations.settle_entries(session, stopped, now=now)
        return redirect(f"/dashboard/apps/{app_id}/campaigns/{token}?notice=stopped")
    stored = await campaigns.describe_campaign(session, access=access, token=token)
    # "keep" (the editor's default button on a live campaign, and Enter): stays as it is.
    live = bool(stored.get("live")) if action == "keep" else action == "live"
    document = carry_hidden_fields(stored, campaign_document(form, live=live))
    try:
        now = utcnow()
        saved = await campaigns.update_campaign(
            session, access=access, token=token, changes=document, now=now, replace=True
        )
        await automations.settle_entries(session, saved, now=now)
    except ClarionError as exc:
        await session.rollback()  # a refused change leaves nothing behind
        return await _editor(
            request,
            session,
            viewer,
            app,
            access,
            form=campaign_form(document),
            campaign=stored,
            error=exc.message,
            status=exc.status,
        )
    notice = "live" if action == "live" else "saved"
    return redirect(f"/dashboard/apps/{app_id}/campaigns/{token}?notice={notice}")


@router.post("/apps/{app_id}/campaigns/{token}/delete")
async def delete_campaign(
    app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    _, access = await service.company_app(session, viewer, app_id)
    now = utcnow()
    deleted = await campaigns.delete_campaign(session, access=access, token=token, now=now)
    await automations.settle_entries(session, deleted, now=now)
    return redirect(f"/dashboard/apps/{app_id}/campaigns")


@router.post("/apps/{app_id}/estimate")
async def estimate(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    """The editor's live audience estimate (a fragment): any role may ask, nothing changes."""
    _, access = await service.company_app(session, viewer, app_id)
    form = await request.form()
    # In-app messages reach installations whether or not they take pushes: matched is the figure.
    inapp = form.get("estimate_for") == "inapp"
    try:
        document = targeting_document(form)
        targeting = validated(EstimateIn, {"targeting": document}).targeting
        result = await campaigns.estimate_audience(
            session, access=access, targeting=targeting or Targeting(), now=utcnow()
        )
    except ClarionError as exc:
        return fragment(request, "estimate.html", error=exc.message)
    return fragment(request, "estimate.html", estimate=result, inapp=inapp)


@router.get("/apps/{app_id}/campaigns/{token}/stats")
async def campaign_stats(
    request: Request, app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> Response:
    app, access = await service.company_app(session, viewer, app_id)
    stored = await campaigns.describe_campaign(session, access=access, token=token)
    if isinstance(stored.get("trigger"), dict):  # an automation: its page has its statistics
        return redirect(f"/dashboard/apps/{app_id}/automations/{token}")
    stats = await campaign_statistics.campaign_stats(session, access=access, token=token)
    errors = await analytics.recent_errors(session, app_id=app.id, campaign_token=token)
    return await render(
        request,
        session,
        viewer,
        "campaign_stats.html",
        app=app,
        section="campaigns",
        campaign=stored,
        report=analytics.campaign_report(stats),
        errors=errors,
    )


@router.get("/apps/{app_id}/campaigns/{token}/progress")
async def campaign_progress(
    request: Request, app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    """The live progress block, polled by the stats page while the campaign sends."""
    _, access = await service.company_app(session, viewer, app_id)
    stored = await campaigns.describe_campaign(session, access=access, token=token)
    return fragment(request, "campaign_progress.html", campaign=stored)


@router.get("/apps/{app_id}/analytics")
async def analytics_page(
    request: Request,
    app_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    days: Annotated[int, Query(ge=1, le=90)] = 7,
) -> HTMLResponse:
    """Transactional sends by group_id over the last `days` days."""
    app, _ = await service.company_app(session, viewer, app_id)
    groups = await analytics.group_stats(session, app_id=app.id, days=days, now=utcnow())
    return await render(
        request,
        session,
        viewer,
        "analytics.html",
        app=app,
        section="analytics",
        groups=groups,
        days=days,
    )


@router.get("/apps/{app_id}/analytics/groups/{group_id:path}")
async def group_page(
    request: Request,
    app_id: DbInt,
    group_id: Annotated[Text, Path(max_length=128)],
    viewer: ViewerDep,
    session: SessionDep,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    report = await analytics.group_report(
        session, app_id=app.id, group_id=group_id, days=days, now=utcnow()
    )
    errors = await analytics.recent_errors(session, app_id=app.id, group_id=group_id, now=utcnow())
    return await render(
        request,
        session,
        viewer,
        "group_stats.html",
        app=app,
        section="analytics",
        group_id=group_id,
        report=report,
        errors=errors,
        days=days,
    )


async def _editor(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    app: App,
    access: AppAccess,
    *,
    form: dict[str, Any],
    campaign: dict[str, Any] | None = None,
    error: str = "",
    notice: str = "",
    status: int = 200,
) -> HTMLResponse:
    return await render(
        request,
        session,
        viewer,
        "campaign_editor.html",
        app=app,
        section="campaigns",
        form=form,
        campaign=campaign,
        error=error,
        notice=notice,
        status=status,
        **await targeting_choices(session, access),
    )


async def targeting_choices(session: AsyncSession, access: AppAccess) -> dict[str, Any]:
    """What the editors' targeting fieldset (_targeting.html) offers: the app's newest custom
    audiences, the query builder's operators and field suggestions, the segments."""
    audiences = await audiences_service.list_audiences(
        session, app_id=access.app_id, offset=0, limit=AUDIENCE_CHOICES
    )
    return {
        "audiences": audiences,
        "operators": QUERY_OPERATORS,
        "field_suggestions": QUERY_FIELD_SUGGESTIONS,
        "segments": SEGMENTS,
    }
