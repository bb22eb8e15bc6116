"""In-app campaigns and themes: list, editor (with the live audience estimate and a preview
drawn by the SDK's own renderer, static/inapp-render.js), statistics, and the themes page.

The editor's form is read into an In-App Campaigns API body (inapp_forms.inapp_document) and
goes through the same service calls as the API, with the app's Live access (from_api=False),
so its rules and messages are the API's; a refused form is shown again, nothing saved.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.models import App
from clarion.apps.service import AppAccess
from clarion.dashboard import queries, service
from clarion.dashboard.campaign_pages import targeting_choices
from clarion.dashboard.inapp_forms import (
    ACTION_CHOICES,
    COLOUR_NAMES,
    GRACE_UNITS,
    TRIGGER_CHOICES,
    carry_hidden_fields,
    inapp_document,
    inapp_form,
    theme_document,
    theme_form,
)
from clarion.dashboard.service import Viewer
from clarion.dashboard.web import (
    CampaignToken,
    Notice,
    PageNumber,
    PageRoute,
    ViewerDep,
    page_window,
    paged,
    redirect,
    render,
    validated,
)
from clarion.db import utcnow
from clarion.errors import ClarionError, MalformedParameterError, NotFoundError
from clarion.formats import DbInt, Text, WireModel
from clarion.http import SessionDep
from clarion.inapp import service as inapp
from clarion.inapp.models import InAppCampaign
from clarion.inapp.schemas import (
    MAX_ACTIONS,
    THEME_CODE,
    CloseButton,
    InAppCounts,
    InAppStats,
    Layout,
    SdkTheme,
    ThemeBody,
    ThemeRead,
)

router = APIRouter(route_class=PageRoute)
ThemeCode = Annotated[Text, Path(max_length=64, pattern=THEME_CODE)]

_NOTICES = {
    "created": "In-app campaign created.",
    "saved": "In-app campaign saved.",
    "theme": "Theme saved.",
    "theme-deleted": "Theme deleted.",
}
_BLANK_FORM = inapp_form({"trigger": {"when": "NEXT_SESSION"}})
_BLANK_THEME = theme_form({"name": "", "code": ""})


@router.get("/apps/{app_id}/inapp")
async def list_inapp_campaigns(
    request: Request,
    app_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    state: Annotated[Text, Query(max_length=32)] = "all",
    page: PageNumber = 1,
    notice: Notice = "",
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    found = await inapp.list_campaigns(
        session,
        access=access,
        **page_window(page),
        live={"live": True, "draft": False}.get(state),
        from_api=None,
    )
    triggers = await queries.triggers(
        session, model=InAppCampaign, app_id=app.id, tokens=[c.campaign_token for c in found]
    )
    return await render(
        request,
        session,
        viewer,
        "inapp_campaigns.html",
        app=app,
        section="inapp",
        **paged("campaigns", found, page),
        triggers=triggers,
        filters={"state": state},
        notice=_NOTICES.get(notice, ""),
    )


@router.get("/apps/{app_id}/inapp/new")
async def new_inapp_campaign(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    return await _editor(request, session, viewer, app, access, form=_BLANK_FORM)


@router.post("/apps/{app_id}/inapp")
async def create_inapp_campaign(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    app, access = await service.company_app(session, viewer, app_id)
    document: dict[str, Any] = {}
    try:
        document = inapp_document(await request.form())
        campaign = await inapp.create_campaign(
            session,
            access=access,
            body=inapp.validate_body(document),
            now=utcnow(),
            from_api=False,
        )
    except ClarionError as exc:
        await session.rollback()  # a refused form leaves nothing behind
        return await _editor(
            request,
            session,
            viewer,
            app,
            access,
            form=inapp_form(document),
            error=exc.message,
            status=exc.status,
        )
    return redirect(f"/dashboard/apps/{app_id}/inapp/{campaign.token}?notice=created")


@router.get("/apps/{app_id}/inapp/{token}")
async def edit_inapp_campaign(
    request: Request,
    app_id: DbInt,
    token: CampaignToken,
    viewer: ViewerDep,
    session: SessionDep,
    notice: Notice = "",
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    stored = await inapp.describe_campaign(session, access=access, token=token)
    return await _editor(
        request,
        session,
        viewer,
        app,
        access,
        form=inapp_form(stored),
        campaign=stored,
        notice=_NOTICES.get(notice, ""),
    )


@router.post("/apps/{app_id}/inapp/{token}")
async def save_inapp_campaign(
    request: Request, app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    app, access = await service.company_app(session, viewer, app_id)
    stored = await inapp.describe_campaign(session, access=access, token=token)
    document: dict[str, Any] = {}
    try:
        document = carry_hidden_fields(stored, inapp_document(await request.form()))
        await inapp.update_campaign(
            session, access=access, token=token, changes=document, now=utcnow(), replace=True
        )
    except ClarionError as exc:
        await session.rollback()  # a refused form leaves nothing behind
        return await _editor(
            request,
            session,
            viewer,
            app,
            access,
            form=inapp_form(document or stored),
            campaign=stored,
            error=exc.message,
            status=exc.status,
        )
    return redirect(f"/dashboard/apps/{app_id}/inapp/{token}?notice=saved")


@router.post("/apps/{app_id}/inapp/{token}/delete")
async def delete_inapp_campaign(
    app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    _, access = await service.company_app(session, viewer, app_id)
    await inapp.delete_campaign(session, access=access, token=token, now=utcnow())
    return redirect(f"/dashboard/apps/{app_id}/inapp")


@router.get("/apps/{app_id}/inapp/{token}/stats")
async def inapp_campaign_stats(
    request: Request, app_id: DbInt, token: CampaignToken, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    app, access = await service.company_app(session, viewer, app_id)
    stored = await inapp.describe_campaign(session, access=access, token=token)
    stats = await inapp.campaign_stats(session, access=access, token=token)
    return await render(
        request,
        session,
        viewer,
        "inapp_stats.html",
        app=app,
        section="inapp",
        campaign=stored,
        report=stats_report(stats),
    )


# Themes -----------------------------------------------------------------------------------------


@router.get("/apps/{app_id}/inapp-themes")
async def list_themes(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep, notice: Notice = ""
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    found = await inapp.themes(session, app_id=app.id)
    return await render(
        request,
        session,
        viewer,
        "inapp_themes.html",
        app=app,
        section="inapp-themes",
        themes=list(found.values()),
        notice=_NOTICES.get(notice, ""),
    )


@router.get("/apps/{app_id}/inapp-themes/new")
async def new_theme(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    return await _theme_editor(request, session, viewer, app, form=_BLANK_THEME)


@router.get("/apps/{app_id}/inapp-themes/{code}/edit")
async def edit_theme(
    request: Request, app_id: DbInt, code: ThemeCode, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    theme = await _theme(session, app.id, code)
    return await _theme_editor(request, session, viewer, app, form=theme_form(theme), theme=theme)


@router.post("/apps/{app_id}/inapp-themes")
async def create_theme(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> Response:
    """A new theme; its code is chosen once, and one the app already has is refused."""
    service.require_editor(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    form = await request.form()
    code = form.get("code")
    document: dict[str, Any] = {}
    try:
        document = theme_document(form)
        code = validated(_NewTheme, {"code": code}).code
        if code in await inapp.themes(session, app_id=app.id):
            raise MalformedParameterError(f"code: this app already has a theme {code!r}")
        await inapp.put_theme(
            session,
            app_id=app.id,
            code=code,
            body=validated(ThemeBody, document),
            now=utcnow(),
        )
    except ClarionError as exc:
        await session.rollback()
        typed = {**document, "code": code if isinstance(code, str) else ""}
        if not document:  # refused before it was read (an opacity): what can be kept
            name = form.get("name")
            typed = {**typed, "name": name if isinstance(name, str) else ""}
        return await _theme_editor(
            request,
            session,
            viewer,
            app,
            form=theme_form(typed),
            error=exc.message,
            status=exc.status,
        )
    return redirect(f"/dashboard/apps/{app_id}/inapp-themes?notice=theme")


@router.post("/apps/{app_id}/inapp-themes/{code}/edit")
async def save_theme(
    request: Request, app_id: DbInt, code: ThemeCode, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    theme = await _theme(session, app.id, code)
    document: dict[str, Any] = {}
    try:
        if theme.built_in:
            raise MalformedParameterError(f"code: the built-in theme {code!r} cannot be changed")
        document = theme_document(await request.form())
        await inapp.put_theme(
            session, app_id=app.id, code=code, body=validated(ThemeBody, document), now=utcnow()
        )
    except ClarionError as exc:
        await session.rollback()
        return await _theme_editor(
            request,
            session,
            viewer,
            app,
            form=theme_form({**document, "code": code}) if document else theme_form(theme),
            theme=theme,
            error=exc.message,
            status=exc.status,
        )
    return redirect(f"/dashboard/apps/{app_id}/inapp-themes?notice=theme")


@router.post("/apps/{app_id}/inapp-themes/{code}/delete")
async def delete_theme(
    request: Request, app_id: DbInt, code: ThemeCode, viewer: ViewerDep, session: SessionDep
) -> Response:
    service.require_editor(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    try:
        await inapp.delete_theme(session, app_id=app.id, code=code)
    except ClarionError as exc:
        # Refused while a live campaign draws with it: the list says which.
        await session.rollback()
        found = await inapp.themes(session, app_id=app_id)
        return await render(
            request,
            session,
            viewer,
            "inapp_themes.html",
            app=app,
            section="inapp-themes",
            themes=list(found.values()),
            error=exc.message,
            status=exc.status,
        )
    return redirect(f"/dashboard/apps/{app_id}/inapp-themes?notice=theme-deleted")


class _NewTheme(WireModel):
    code: str = Field(pattern=THEME_CODE)


async def _theme(session: AsyncSession, app_id: int, code: str) -> ThemeRead:
    theme = (await inapp.themes(session, app_id=app_id)).get(code)
    if theme is None:
        raise NotFoundError(f"this app has no in-app theme {code!r}")
    return theme


# Statistics -------------------------------------------------------------------------------------


def stats_report(stats: InAppStats) -> dict[str, Any]:
    """The statistics page's figures: totals, each day (each version under it), and the buttons
    seen in any day, as columns (position and last label)."""
    totals = InAppCounts()
    buttons: dict[int, str | None] = {}
    clicks: dict[int, int] = {}
    for day in stats.detail:
        totals.supplied += day.supplied
        totals.shown += day.shown
        totals.clicked += day.clicked
        totals.closed += day.closed
        for cta in day.ctas:
            buttons[cta.position] = cta.label or buttons.get(cta.position)
            clicks[cta.position] = clicks.get(cta.position, 0) + cta.clicked
    totals.click_rate = totals.clicked / totals.shown if totals.shown else None
    positions = sorted(buttons)
    rows = []
    for day in stats.detail:
        rows.append({"label": day.date, "counts": day, "ctas": _by_position(day, positions)})
        for version, counts in sorted((day.versions or {}).items()):
            rows.append(
                {
                    "label": f"{day.date} · version {version}",
                    "counts": counts,
                    "ctas": _by_position(counts, positions),
                    "version": True,
                }
            )
    return {
        "totals": totals,
        "buttons": [(position, buttons[position]) for position in positions],
        "button_clicks": [clicks[position] for position in positions],
        "rows": rows,
    }


def _by_position(counts: InAppCounts, positions: list[int]) -> list[int]:
    found = {cta.position: cta.clicked for cta in counts.ctas}
    return [found.get(position, 0) for position in positions]


# Editors ----------------------------------------------------------------------------------------


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
    # access, not app: after a rollback the app's attributes are expired until render reloads it.
    themes = await inapp.themes(session, app_id=access.app_id)
    return await render(
        request,
        session,
        viewer,
        "inapp_editor.html",
        app=app,
        section="inapp",
        form=form,
        campaign=campaign,
        themes=list(themes.values()),
        preview_themes={code: preview_theme(theme) for code, theme in themes.items()},
        error=error,
        notice=notice,
        status=status,
        **await targeting_choices(session, access),
        trigger_choices=TRIGGER_CHOICES,
        grace_units=GRACE_UNITS,
        action_choices=ACTION_CHOICES,
        max_actions=MAX_ACTIONS,
    )


async def _theme_editor(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    app: App,
    *,
    form: dict[str, Any],
    theme: ThemeRead | None = None,
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    return await render(
        request,
        session,
        viewer,
        "inapp_theme_editor.html",
        app=app,
        section="inapp-themes",
        form=form,
        theme=theme,
        error=error,
        status=status,
        layouts=[layout.value for layout in Layout],
        close_buttons=[place.value for place in CloseButton],
        colour_names=COLOUR_NAMES,
    )


def preview_theme(theme: ThemeRead) -> dict[str, Any]:
    """A theme as the SDK is handed it (SdkMessage.theme), for the preview's renderer."""
    return SdkTheme(
        code=theme.code,
        layout=theme.layout,
        colours=theme.colours.model_dump(),
        font=theme.font.model_dump(),
        close_button=theme.close_button,
        corner_radius=theme.corner_radius,
        auto_close_seconds=theme.auto_close_seconds,
    ).model_dump(mode="json")
