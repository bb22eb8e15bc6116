"""In-App Campaigns API 1.1 (spec §6), the admin API's themes, and the SDK's fetch of the
messages due for an installation (docs/inapp.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response

from clarion.formats import Text
from clarion.http import RuntimeDep, SdkApp
from clarion.inapp.schemas import SdkMessages
from clarion.sdk.service import check_install_id

router = APIRouter(prefix="/1.1/{api_key}/in-app-campaigns", tags=["in-app"])
themes_router = APIRouter(prefix="/admin/v1/apps/{app_id}/inapp-themes", tags=["admin"])
sdk_router = APIRouter(prefix="/sdk/v1/{api_key}", tags=["sdk"])
InstallId = Annotated[Text, Path(max_length=128)]


_FETCH_HEADERS = {"Cache-Control": "private, no-cache"}


@sdk_router.get(
    "/installations/{install_id}/inapp-messages",
    response_class=Response,
    responses={
        200: {"model": SdkMessages, "description": "The messages due for the installation."},
        304: {"description": "Unchanged: If-None-Match names the answer's ETag."},
    },
)
async def fetch_inapp_messages(
    install_id: InstallId,
    access: SdkApp,
    runtime: RuntimeDep,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The in-app messages due for the installation, resolved for it (docs/inapp.md,
    "Delivery to installations"). Send the last ETag in If-None-Match: 304 when unchanged."""
    check_install_id(install_id)
    answer = await runtime.inapp.fetch(
        app_id=access.app_id,
        platform=access.platform,
        install_id=install_id,
        if_none_match=if_none_match,
    )
    headers = {**_FETCH_HEADERS, "ETag": answer.etag}
    if answer.body is None:
        return Response(status_code=304, headers=headers)
    return Response(answer.body, media_type="application/json", headers=headers)
