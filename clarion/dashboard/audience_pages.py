"""Audiences: sizes and indexing, CSV upload, flat-file import sources and export destinations.

Thin: each route checks the role, calls a service (or a read query of dashboard.queries) and
renders. The upload takes the same query parameters as the API's `PUT …/custom-audience/{name}
/file`, read with the same types and messages, and streams the body to the same service call.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ConfigDict, Field

from clarion.audiences import service as audiences
from clarion.audiences.models import AudienceKind
from clarion.dashboard import queries, service
from clarion.dashboard.web import (
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
from clarion.errors import ClarionError, MalformedParameterError
from clarion.exports import service as exports
from clarion.formats import DbInt, Text, WireModel
from clarion.http import RuntimeDep, SessionDep
from clarion.imports import service as imports
from clarion.imports.idfile import IdFileFormat
from clarion.imports.schemas import Delimiter

router = APIRouter(route_class=PageRoute)

Name = Annotated[Text, Path(min_length=1, max_length=100)]

KIND_LABELS = {
    AudienceKind.CUSTOM_IDS.value: "Custom user ids",
    AudienceKind.INSTALL_IDS.value: "Installation ids",
    AudienceKind.ADVERTISING_IDS.value: "Advertising ids (IDFA / GAID)",
}
DELIMITERS = [(",", "Comma (,)"), (";", "Semicolon (;)"), ("\t", "Tab"), ("|", "Pipe (|)")]
_NOTICES = {"run": "The source is polled at a worker's next check; its runs appear below."}


class UploadParams(WireModel):
    """The query of an upload: the API's parameters (imports.api.upload_audience), with the
    audience's name, which the API takes from the path."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=255)
    type: AudienceKind = AudienceKind.CUSTOM_IDS
    header: bool = False
    delimiter: Delimiter = ","
    column: str = Field(default="1", min_length=1, max_length=255)

    @classmethod
    def read(cls, request: Request) -> UploadParams:
        query = dict(request.query_params)
        if "name" in query:
            query["name"] = query["name"].strip()
        return validated(cls, query, location=("query",))

    def file_format(self) -> IdFileFormat:
        return IdFileFormat(
            kind=self.type, header=self.header, delimiter=self.delimiter, column=self.column
        )


@router.get("/apps/{app_id}/audiences")
async def audiences_page(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep, page: PageNumber = 1
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    found = await audiences.list_audiences(session, app_id=app.id, **page_window(page))
    listed = paged("audiences", found, page)
    importing = await queries.importing_audiences(
        session, app_id=app.id, names=[audience.name for audience in listed["audiences"]]
    )
    return await render(
        request,
        session,
        viewer,
        "audiences.html",
        app=app,
        section="audiences",
        importing=importing,
        **listed,
        kinds=KIND_LABELS,
        delimiters=DELIMITERS,
    )


@router.post("/apps/{app_id}/audiences/upload")
async def upload_audience(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep, runtime: RuntimeDep
) -> HTMLResponse:
    """The body is the CSV file itself (static/app.js streams it); answers a fragment, errors
    included, for the page's result area."""
    try:
        service.require_editor(viewer)
        app, _ = await service.company_app(session, viewer, app_id)
        if request.headers.get("content-type", "").startswith(
            ("multipart/form-data", "application/x-www-form-urlencoded")
        ):
            raise MalformedParameterError("body: send the file itself as the body, not a form")
        params = UploadParams.read(request)
        result = await imports.upload_audience(
            session,
            app_id=app.id,
            name=params.name,
            format=params.file_format(),
            chunks=request.stream(),
            spool_dir=runtime.settings.var_dir / "spool",
            now=utcnow(),
        )
    except ClarionError as exc:
        await session.rollback()  # nothing of a refused upload is kept
        return fragment(request, "audiences_upload.html", status=exc.status, error=exc.message)
    return fragment(
        request, "audiences_upload.html", app_id=app.id, name=params.name, result=result
    )


@router.get("/apps/{app_id}/audiences/imports")
async def imports_page(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep, page: PageNumber = 1
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    found = await queries.sources_with_last_run(session, app_id=app.id, **page_window(page))
    return await render(
        request,
        session,
        viewer,
        "audiences_imports.html",
        app=app,
        section="audiences",
        **paged("sources", found, page),
        kinds=KIND_LABELS,
    )


@router.get("/apps/{app_id}/audiences/imports/{name}")
async def import_source_page(
    request: Request,
    app_id: DbInt,
    name: Name,
    viewer: ViewerDep,
    session: SessionDep,
    page: PageNumber = 1,
    notice: str = "",
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    source = await imports.describe_source(session, app_id=app.id, name=name)
    runs = await queries.source_runs(session, app_id=app.id, name=name, **page_window(page))
    return await render(
        request,
        session,
        viewer,
        "audiences_import.html",
        app=app,
        section="audiences",
        source=source,
        **paged("runs", runs, page),
        kinds=KIND_LABELS,
        notice=_NOTICES.get(notice, ""),
    )


@router.post("/apps/{app_id}/audiences/imports/{name}/run")
async def run_import_source(
    app_id: DbInt, name: Name, viewer: ViewerDep, session: SessionDep
) -> Response:
    """Run now: the source is due at once, and a worker polls it at its next check."""
    service.require_editor(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    await imports.request_run(session, app_id=app.id, name=name, now=utcnow())
    return redirect(f"/dashboard/apps/{app.id}/audiences/imports/{quote(name)}?notice=run")


@router.get("/apps/{app_id}/audiences/exports")
async def exports_page(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep, page: PageNumber = 1
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    found = await queries.destinations_with_last_run(session, app_id=app.id, **page_window(page))
    return await render(
        request,
        session,
        viewer,
        "audiences_exports.html",
        app=app,
        section="audiences",
        **paged("destinations", found, page),
    )


@router.get("/apps/{app_id}/audiences/exports/{name}")
async def export_destination_page(
    request: Request,
    app_id: DbInt,
    name: Name,
    viewer: ViewerDep,
    session: SessionDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    destination = await exports.describe_destination(session, app_id=app.id, name=name)
    runs = await queries.destination_runs(session, app_id=app.id, name=name, **page_window(page))
    return await render(
        request,
        session,
        viewer,
        "audiences_export.html",
        app=app,
        section="audiences",
        destination=destination,
        **paged("runs", runs, page),
    )
