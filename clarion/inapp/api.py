"""In-App Campaigns API 1.1 (spec §6), the admin API's themes, and the SDK's fetch of the
messages due for an installation (docs/inapp.md)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from clarion.apps.service import KeyCache, get_company_app
from clarion.db import utcnow
from clarion.errors import ClarionError, NotFoundError
from clarion.formats import INT64_MAX, DbInt, Text
from clarion.http import (
    RestApp,
    RestAppLive,
    RestCompany,
    RuntimeDep,
    SdkApp,
    SessionDep,
    send_answer,
)
from clarion.inapp import service
from clarion.inapp.eligibility import InAppFeed
from clarion.inapp.schemas import (
    THEME_CODE,
    InAppCampaignBody,
    InAppCampaignCreated,
    InAppCampaignSummary,
    InAppStats,
    SdkMessages,
    ThemeBody,
    ThemeRead,
)
from clarion.logs import annotate
from clarion.sdk.service import check_install_id

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


InstallId = Annotated[Text, Path(max_length=128)]


_FETCH_HEADERS = {"Cache-Control": "private, no-cache"}
_MAX_IF_NONE_MATCH = 1024
_FETCH_PATH = re.compile(r"/sdk/v1/([^/]+)/installations/([^/]+)/inapp-messages/?")


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
    if_none_match: Annotated[str | None, Header(max_length=_MAX_IF_NONE_MATCH)] = None,
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


class FetchFastPath:
    """Answers the SDK's fetches before FastAPI routes the request, when it can.

    The fetch is the SDK API's hottest route: every app start asks it, nearly always for a
    304. With the app key already authenticated by this process (KeyCache) and a well-formed
    install id, the answer needs neither FastAPI's routing and dependencies nor, for a 304, the
    database (InAppFeed.not_modified), and those cost more than the rest. Measured on this
    machine: 304s ~4,500/s through the route, ~23,000/s here; full fetches ~1,075/s through the
    route, ~1,450-1,600/s here. Anything else (a key this process has not seen lately, a
    malformed id or header, an unknown installation) goes on to the route, which answers it in
    Batch's format.
    """

    def __init__(self, app: ASGIApp, key_cache: KeyCache, feed: InAppFeed) -> None:
        self.app = app
        self.key_cache = key_cache
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _FETCH_PATH.fullmatch(scope["path"])
            if match is not None and await self._answered(match[1], match[2], scope, send):
                return
        await self.app(scope, receive, send)

    async def _answered(self, api_key: str, install_id: str, scope: Scope, send: Send) -> bool:
        if_none_match = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
        if if_none_match is not None and len(if_none_match) > _MAX_IF_NONE_MATCH:
            return False
        access = self.key_cache.app(api_key)
        if access is None:
            return False
        annotate(app_id=access.app_id)  # on the request's log lines, as SdkApp does for routes
        try:
            check_install_id(install_id)
            answer = await self.feed.fetch(
                app_id=access.app_id,
                platform=access.platform,
                install_id=install_id,
                if_none_match=None if if_none_match is None else if_none_match.decode("latin-1"),
            )
        except ClarionError:  # a malformed id, an unknown installation
            return False
        headers = [
            (b"etag", answer.etag.encode()),
            (b"cache-control", _FETCH_HEADERS["Cache-Control"].encode()),
        ]
        if answer.body is None:
            await send_answer(send, 304, headers)
            return True
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer.body)).encode()),
        ]
        await send_answer(send, 200, headers, answer.body)
        return True
