"""Admin API: an app's push caps (the company's REST key, one of its apps)."""

from __future__ import annotations

from fastapi import APIRouter

from clarion.apps.service import get_company_app
from clarion.capping import service
from clarion.capping.schemas import PushCapsIn, PushCapsRead
from clarion.formats import DbInt
from clarion.http import RestCompany, SessionDep

router = APIRouter(prefix="/admin/v1/apps/{app_id}/push-caps", tags=["admin"])


@router.get("", response_model=PushCapsRead)
async def get_push_caps(app_id: DbInt, company: RestCompany, session: SessionDep) -> PushCapsRead:
    app = await get_company_app(session, company_id=company.id, app_id=app_id)
    return service.push_caps_of(app)


@router.put("", response_model=PushCapsRead)
async def set_push_caps(
    app_id: DbInt, body: PushCapsIn, company: RestCompany, session: SessionDep
) -> PushCapsRead:
    """At most `max` pushes per installation in `hours`: across every automation
    (`automations`) and per campaign label (`labels`, automations and scheduled campaigns),
    replacing the previous caps. See docs/campaigns.md, "Capping"."""
    app = await get_company_app(session, company_id=company.id, app_id=app_id)
    return service.set_push_caps(app, body)
