"""GDPR API 1.0 (spec §10), plus the download of a review's archive (its `data_url`): behind
the app's company REST key and the app's Live key, until the archive expires."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse

from clarion.config import Settings
from clarion.db import utcnow
from clarion.errors import NotFoundError
from clarion.formats import Text, wire_date
from clarion.gdpr import service
from clarion.gdpr.models import GdprRequest
from clarion.gdpr.schemas import GdprCreated, GdprId, GdprRequestIn, GdprRequestRead
from clarion.http import RestAppLive, RuntimeDep, SessionDep
from clarion.openapi import BINARY

router = APIRouter(prefix="/1.0/{api_key}/gdpr", tags=["gdpr"])
RequestId = Annotated[Text, Path(max_length=64)]


@router.post("/request", status_code=201)
async def create_request(
    body: GdprRequestIn, access: RestAppLive, session: SessionDep, runtime: RuntimeDep
) -> GdprCreated:
    request_id = await service.create_request(
        session, app_id=access.app_id, body=body, outbound=runtime.outbound, now=utcnow()
    )
    return GdprCreated(request_id=request_id)


@router.get("/requests")
async def list_requests(
    request: Request, access: RestAppLive, session: SessionDep, runtime: RuntimeDep
) -> list[GdprRequestRead]:
    found = await service.list_requests(session, app_id=access.app_id, now=utcnow())
    return [_read(request, item, runtime.settings) for item in found]


@router.get("/request/{request_id}", response_model_exclude_none=True)
async def get_request(
    request_id: RequestId,
    request: Request,
    access: RestAppLive,
    session: SessionDep,
    runtime: RuntimeDep,
) -> GdprRequestRead:
    found = await service.get_request(session, app_id=access.app_id, request_id=request_id)
    return _read(request, found, runtime.settings)


@router.get(
    "/request/{request_id}/data",
    name="gdpr_archive",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {"schema": BINARY}}}},
)
async def download_archive(
    request_id: RequestId, access: RestAppLive, session: SessionDep, runtime: RuntimeDep
) -> FileResponse:
    found = await service.get_request(session, app_id=access.app_id, request_id=request_id)
    expiry = service.archive_expiry(found, _retention(runtime.settings))
    if expiry is not None and (found.archive is None or utcnow() >= expiry):
        raise NotFoundError(
            f"the archive of GDPR request {request_id!r} expired on {wire_date(expiry)} "
            "and was deleted"
        )
    path = service.archive_path(runtime.settings.var_dir, found)
    if path is None or not path.exists():
        raise NotFoundError(f"no archive for GDPR request {request_id!r}")
    return FileResponse(path, media_type="application/zip", filename=f"gdpr-{request_id}.zip")


def _retention(settings: Settings) -> timedelta:
    return timedelta(days=settings.gdpr_archive_days)


def _read(request: Request, found: GdprRequest, settings: Settings) -> GdprRequestRead:
    data_url = None
    expiry = service.archive_expiry(found, _retention(settings))
    expired = None if expiry is None else found.archive is None or utcnow() >= expiry
    if expired is False:
        data_url = str(
            request.url_for(
                "gdpr_archive", api_key=request.path_params["api_key"], request_id=found.id
            )
        )
    return GdprRequestRead(
        request_id=found.id,
        request_date=found.created_at.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{found.created_at.microsecond // 1000:03d}",
        status=found.status,
        request_type=found.request_type,
        error=found.error,
        data_url=data_url,
        data_expiry=None if expiry is None else wire_date(expiry),
        data_expired=expired,
        id=GdprId.model_validate({"type": found.id_type, "value": found.id_value}),
    )
