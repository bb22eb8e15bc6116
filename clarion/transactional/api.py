"""Transactional API 1.1 (and the 1.0 alias older clients still call), spec §3."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from clarion.formats import Text
from clarion.http import RestApp, RestAppLive, RuntimeDep, SessionDep
from clarion.logs import annotate
from clarion.transactional import service
from clarion.transactional.schemas import SendRead, TransactionalAccepted, TransactionalSend

router = APIRouter(tags=["transactional"])


@router.post("/1.1/{api_key}/transactional/send", status_code=201)
@router.post("/1.0/{api_key}/transactional/send", status_code=201, include_in_schema=False)
async def send_transactional(
    body: TransactionalSend, access: RestApp, runtime: RuntimeDep
) -> TransactionalAccepted:
    # Stored by the intake's group commit (not this request's session): committed on return.
    token = await runtime.send_intake.submit(access=access, body=body)
    annotate(send_token=token)  # on the request's log lines from now on (its access line)
    return TransactionalAccepted(token=token)


@router.get("/1.1/{api_key}/transactional/sends/{token}", response_model=SendRead)
async def get_transactional_send(
    token: Annotated[Text, Path(max_length=64)], access: RestAppLive, session: SessionDep
) -> SendRead:
    """Clarion's addition: what one call targeted, sent and failed (Batch's debug tool)."""
    annotate(send_token=token)
    return await service.describe_send(session, access=access, token=token)
