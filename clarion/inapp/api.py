"""In-App Campaigns API 1.1 (spec §6), the admin API's themes, and the SDK's fetch of the
messages due for an installation (docs/inapp.md)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/1.1/{api_key}/in-app-campaigns", tags=["in-app"])
themes_router = APIRouter(prefix="/admin/v1/apps/{app_id}/inapp-themes", tags=["admin"])
sdk_router = APIRouter(prefix="/sdk/v1/{api_key}", tags=["sdk"])
