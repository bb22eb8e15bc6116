"""Trigger Events API 1.0 (spec §9): a server tracks events on its users' custom ids, and
automations enter (or cancel) them in the same transaction (clarion.automations)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Path
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.automations import service as automations
from clarion.automations.catalogue import AutomationCatalogue
from clarion.db import utcnow
from clarion.events import service
from clarion.events.schemas import EventsAccepted, ServerEventIn, UserEventsBulkIn, UserEventsIn
from clarion.formats import Text
from clarion.http import RestAppLive, RuntimeDep, SessionDep

router = APIRouter(prefix="/1.0/{api_key}/events/users", tags=["trigger events"])


@router.post("/{custom_id}", status_code=202)
async def track_user_events(
    custom_id: Annotated[Text, Path(min_length=1, max_length=512)],
    body: UserEventsIn,
    access: RestAppLive,
    session: SessionDep,
    runtime: RuntimeDep,
) -> EventsAccepted:
    return await _track(session, runtime.automations, access.app_id, [(custom_id, body.events)])


@router.post("", status_code=202)
async def track_events_of_users(
    body: UserEventsBulkIn, access: RestAppLive, session: SessionDep, runtime: RuntimeDep
) -> EventsAccepted:
    users = [(item.id, item.events) for item in body.root]
    return await _track(session, runtime.automations, access.app_id, users)


async def _track(
    session: AsyncSession,
    catalogue: AutomationCatalogue,
    app_id: int,
    users: Sequence[tuple[str, Sequence[ServerEventIn]]],
) -> EventsAccepted:
    now = utcnow()
    stored = await service.track_user_events(session, app_id=app_id, users=users, now=now)
    await automations.enter_events(session, catalogue, app_id=app_id, events=stored.rows, now=now)
    return EventsAccepted(token=stored.token)
