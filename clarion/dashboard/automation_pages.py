"""Automations: list, editor, and the automation's page (what became of its entries, its pushes
and conversions, its newest entries).

The editor's form is read into a Campaigns API body with a `trigger`
(automation_forms.automation_document) and goes through the same service calls as the API, so
its rules and messages are the API's; a refused form comes back with the message beside the
field it names, nothing saved. Pausing, saving as not live and deleting also cancel the
pending entries, as the API's routes do (automations.service.settle_entries).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.models import App
from clarion.apps.service import AppAccess
from clarion.automations import service as automations
from clarion.campaigns import service as campaigns
from clarion.campaigns.models import Campaign
from clarion.dashboard import analytics, queries, service
from clarion.dashboard.automation_forms import (
    AUTOMATION_FIELDS,
    DELAY_UNITS,
    automation_document,
    automation_form,
    refusal_of,
)
from clarion.dashboard.campaign_pages import targeting_choices
from clarion.dashboard.schemas import carry_hidden_fields
from clarion.dashboard.service import Viewer
from clarion.dashboard.web import (
    PAGE_SIZE,
    CampaignToken,
    Notice,
    PageNumber,
    PageRoute,
    ViewerDep,
    page_window,
    paged,
    redirect,
    render,
)
from clarion.db import utcnow
from clarion.errors import ClarionError
from clarion.formats import DbInt, Text
from clarion.http import SessionDep
from clarion.stats import automations as automation_statistics
from clarion.stats import service as campaign_statistics

router = APIRouter(route_class=PageRoute)

_NOTICES = {
    "created": "Automation saved as a draft.",
    "saved": "Automation saved.",
    "live": "Automation saved and active.",
    "paused": "Automation paused: its pending entries are cancelled.",
    "resumed": "Automation active again.",
}
_BLANK_FORM: dict[str, Any] = automation_form(
    {"messages": [{"language": "default", "body": ""}], "trigger": {"delay_seconds": 3600}}
)
# The days the automation page's figures cover, as a choice of the page.
DAY_CHOICES = (1, 7, 30, 90, 365)


@router.get("/apps/{app_id}/automations")
async def list_automations(
    request: Request,
    app_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    state: Annotated[Text, Query(max_length=32)] = "all",
    q: Annotated[Text, Query(max_length=256)] = "",
    page: PageNumber = 1,
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    found = await campaigns.list_campaigns(
        session,
        access=access,
        **page_window(page),
        live={"active": True, "paused": False}.get(state),
        from_api=None,
        name_contains=q.strip(),
        automation=True,
    )
    triggers = await queries.triggers(
        session, model=Campaign, app_id=app.id, tokens=[c.campaign_token for c in found]
    )
    return await render(
        request,
        session,
        viewer,
        "automations.html",
        app=app,
        section="campaigns",
        **paged("automations", found, page),
        triggers=triggers,
        filters={"state": state, "q": q},
    )


@router.get("/apps/{app_id}/automations/new")
async def new_automation(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    return await _editor(request, session, viewer, app, access, form=_BLANK_FORM)


@router.post("/apps/{app_id}/automations")
async def create_automation(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    app, access = await service.company_app(session, viewer, app_id)
    form = await request.form()
    live = form.get("action") == "live"
    document: dict[str, Any] = {}
    try:
        document = automation_document(form, live=live)
        campaign = await campaigns.create_campaign(
            session,
            access=access,
            body=campaigns.validate_body(document),
            now=utcnow(),
            from_api=False,
        )
    except ClarionError as exc:
        await session.rollback()  # a refused form leaves nothing behind
        return await _refused(request, session, viewer, app, access, document, exc)
    notice = "live" if live else "created"
    return redirect(f"/dashboard/apps/{app_id}/automations/{campaign.token}?notice={notice}")


@router.get("/apps/{app_id}/automations/{token}")
async def automation_page(
    request: Request,
    app_id: DbInt,
    token: CampaignToken,
    viewer: ViewerDep,
    session: SessionDep,
    days: Annotated[
        int, Query(ge=1, le=automation_statistics.MAX_STATS_DAYS)
    ] = automation_statistics.STATS_DAYS,
    before: Annotated[DbInt | None, Query(description="the entries older than this one")] = None,
    notice: Notice = "",
) -> Response:
    """The automation's figures over the last `days` days, and a page of its newest entries
    (from the one before entry `before`: keyset, never an offset)."""
    app, access = await service.company_app(session, viewer, app_id)
    campaign = await campaigns.find_campaign(session, access, token)
    stats = await campaign_statistics.campaign_stats(
        session, access=access, token=token, automation_days=days
    )
    if stats.automation is None:  # a campaign without a trigger
        return redirect(f"/dashboard/apps/{app_id}/campaigns/{token}")
    entries = await automation_statistics.recent_entries(
        session, campaign_id=campaign.id, before=before, limit=PAGE_SIZE + 1
    )
    errors = await analytics.recent_errors(session, app_id=app.id, campaign_token=token)
    return await render(
        request,
        session,
        viewer,
        "automation.html",
        app=app,
        section="campaigns",
        campaign=campaign,
        figures=stats.automation,
        report=analytics.automation_report(stats.automation, stats.detail),
        entries=entries[:PAGE_SIZE],
        older=entries[PAGE_SIZE - 1].id if len(entries) > PAGE_SIZE else None,
        before=before,
        days=days,
        day_choices=DAY_CHOICES,
        errors=errors,
        notice=_NOTICES.get(notice, ""),
    )


@router.get("/apps/{app_id}/automations/{token}/edit")
async def edit_automation(
    request: Request, app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    stored = await campaigns.describe_campaign(session, access=access, token=token)
    return await _editor(
        request, session, viewer, app, access, form=automation_form(stored), campaign=stored
    )


@router.post("/apps/{app_id}/automations/{token}/edit")
async def save_automation(
    request: Request, app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> Response:
    """Save the editor: as a draft or paused (action draft), active (live), or as it is
    (keep: the default button of an active or paused automation, and Enter)."""
    service.require_editor(viewer)
    app, access = await service.company_app(session, viewer, app_id)
    form = await request.form()
    action = form.get("action")
    stored = await campaigns.describe_campaign(session, access=access, token=token)
    live = bool(stored.get("live")) if action == "keep" else action == "live"
    document: dict[str, Any] = {}
    now = utcnow()
    try:
        document = carry_hidden_fields(
            stored, automation_document(form, live=live), shown=AUTOMATION_FIELDS
        )
        campaign = await campaigns.update_campaign(
            session, access=access, token=token, changes=document, now=now, replace=True
        )
    except ClarionError as exc:
        await session.rollback()  # a refused form leaves nothing behind
        return await _refused(
            request, session, viewer, app, access, document or stored, exc, campaign=stored
        )
    await automations.settle_entries(session, campaign, now=now)
    notice = "live" if action == "live" else "saved"
    return redirect(f"/dashboard/apps/{app_id}/automations/{token}?notice={notice}")


@router.post("/apps/{app_id}/automations/{token}/live")
async def pause_or_resume(
    request: Request, app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> Response:
    """Pause (live=false: pending entries are cancelled, events enter no one) or resume
    (live=true), from the automation's page, without the editor."""
    service.require_editor(viewer)
    _, access = await service.company_app(session, viewer, app_id)
    now = utcnow()
    if (await request.form()).get("live") == "true":
        campaign = await campaigns.update_campaign(
            session, access=access, token=token, changes={"live": True}, now=now
        )
        notice = "resumed"
    else:
        campaign = await campaigns.set_offline(session, access=access, token=token, now=now)
        notice = "paused"
    await automations.settle_entries(session, campaign, now=now)
    return redirect(f"/dashboard/apps/{app_id}/automations/{token}?notice={notice}")


@router.post("/apps/{app_id}/automations/{token}/delete")
async def delete_automation(
    app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    _, access = await service.company_app(session, viewer, app_id)
    now = utcnow()
    campaign = await campaigns.delete_campaign(session, access=access, token=token, now=now)
    await automations.settle_entries(session, campaign, now=now)
    return redirect(f"/dashboard/apps/{app_id}/automations")


async def _refused(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    app: App,
    access: AppAccess,
    document: dict[str, Any],
    exc: ClarionError,
    *,
    campaign: dict[str, Any] | None = None,
) -> HTMLResponse:
    """The editor again, with what was typed and the refusal beside the field it names (at
    the top when it names none the editor shows)."""
    refused = refusal_of(exc.message)
    return await _editor(
        request,
        session,
        viewer,
        app,
        access,
        form=automation_form(document) if document else _BLANK_FORM,
        campaign=campaign,
        error="" if refused else exc.message,
        refused=refused,
        status=exc.status,
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
    refused: Any = None,
    status: int = 200,
) -> HTMLResponse:
    return await render(
        request,
        session,
        viewer,
        "automation_editor.html",
        app=app,
        section="campaigns",
        form=form,
        campaign=campaign,
        error=error,
        refused=refused,
        status=status,
        delay_units=list(DELAY_UNITS),
        **await targeting_choices(session, access),
    )
