"""In-app campaigns written straight into the database, as the In-App Campaigns API stores them
(its body as accepted, its loose window, the app's revision bumped in the same transaction)."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from sqlalchemy import select

from clarion.db import transaction, utcnow
from clarion.inapp.eligibility import loose_window
from clarion.inapp.models import InAppCampaign
from clarion.inapp.schemas import InAppCampaignBody
from clarion.inapp.service import bump_revision
from clarion.runtime import Runtime
from tests.conftest import ClientApp


def campaign_body(**fields: Any) -> dict[str, Any]:
    """A live campaign shown at the next session to everyone, with `fields` replacing its own."""
    body: dict[str, Any] = {
        "name": "Welcome",
        "live": True,
        "trigger": {"when": "NEXT_SESSION"},
        "landing": {"contents": [{"title": "Hello"}]},
    }
    body.update(fields)
    return body


async def create_campaign(
    runtime: Runtime, app: ClientApp, *, dev_only: bool = False, **fields: Any
) -> str:
    """Store a campaign (campaign_body with `fields`); returns its token."""
    parsed = InAppCampaignBody.model_validate(campaign_body(**fields))
    start, end = loose_window(parsed)
    token = secrets.token_hex(16)
    async with transaction(runtime.sessions) as session:
        session.add(
            InAppCampaign(
                token=token,
                app_id=app.app_id,
                name=parsed.name,
                dev_only=dev_only,
                live=parsed.live,
                body=parsed.model_dump(mode="json", exclude_none=True),
                window_start=start,
                window_end=end,
            )
        )
        await bump_revision(session, app_id=app.app_id)
    return token


async def delete_campaign(runtime: Runtime, app: ClientApp, token: str) -> None:
    async with transaction(runtime.sessions) as session:
        campaign = await session.scalar(select(InAppCampaign).where(InAppCampaign.token == token))
        assert campaign is not None
        campaign.deleted_at = utcnow()
        await bump_revision(session, app_id=app.app_id)


async def fetch(
    api: httpx.AsyncClient, app: ClientApp, install_id: str, *, etag: str | None = None
) -> httpx.Response:
    headers = {} if etag is None else {"If-None-Match": etag}
    return await api.get(
        f"/sdk/v1/{app.api_key}/installations/{install_id}/inapp-messages", headers=headers
    )


async def messages(api: httpx.AsyncClient, app: ClientApp, install_id: str) -> list[Any]:
    response = await fetch(api, app, install_id)
    assert response.status_code == 200, response.text
    found: list[Any] = response.json()["messages"]
    return found


async def tokens(api: httpx.AsyncClient, app: ClientApp, install_id: str) -> set[str]:
    return {message["campaign_token"] for message in await messages(api, app, install_id)}
