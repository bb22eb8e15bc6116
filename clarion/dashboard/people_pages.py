"""Users: look a user up by custom id or install id, the first thing support needs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from clarion.dashboard import people, service
from clarion.dashboard.web import PageRoute, ViewerDep, render
from clarion.formats import DbInt, Text
from clarion.http import SessionDep

router = APIRouter(route_class=PageRoute)


@router.get("/apps/{app_id}/people")
async def people_page(
    request: Request,
    app_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    q: Annotated[Text, Query(max_length=512)] = "",
    by: people.LookupBy = people.LookupBy.CUSTOM_ID,
) -> HTMLResponse:
    """Every role may read it; it changes nothing."""
    app, _ = await service.company_app(session, viewer, app_id)
    query = q.strip()
    profile = await people.look_up(session, app_id=app.id, query=query, by=by) if query else None
    return await render(
        request,
        session,
        viewer,
        "people.html",
        app=app,
        section="people",
        query=query,
        by=by.value,
        profile=profile,
    )
