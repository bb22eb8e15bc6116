"""Trigger Events API 1.0 (spec §9): a server tracks events on its users' custom ids."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from clarion.events import service
from clarion.events.schemas import EventsAccepted, UserEventsBulkIn, UserEventsIn
from clarion.formats import Text
from clarion.http import RestAppLive, SessionDep

router = APIRouter(prefix="/1.0/{api_key}/events/users", tags=["trigger events"])


@router.post("/{custom_id}", status_code=202)
async def track_user_events(
    custom_id: Annotated[Text, Path(min_length=1, max_length=512)],
    body: UserEventsIn,
    access: RestAppLive,
    session: SessionDep,
) -> EventsAccepted:
    token = await service.track_user_events(
        session, app_id=access.app_id, users=[(custom_id, body.events)]
    )
    return EventsAccepted(token=token)


@router.post("", status_code=202)
async def track_events_of_users(
    body: UserEventsBulkIn, access: RestAppLive, session: SessionDep
) -> EventsAccepted:
    token = await service.track_user_events(
        session, app_id=access.app_id, users=[(item.id, item.events) for item in body.root]
    )
    return EventsAccepted(token=token)
