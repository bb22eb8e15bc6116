"""GDPR API 1.0 wire format (spec §10): one user per request, reviewed or removed."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from clarion.formats import HTTP_OR_HTTPS_URL, Id, IdType, WireModel
from clarion.gdpr.models import RequestType


class GdprId(WireModel):
    type: IdType
    value: Annotated[Id, Field(min_length=1, max_length=512)]


class GdprRequestIn(WireModel):
    model_config = ConfigDict(extra="ignore")

    request_type: RequestType
    callback_url: str | None = Field(default=None, pattern=HTTP_OR_HTTPS_URL, max_length=2048)
    id: GdprId


class GdprCreated(BaseModel):
    request_id: str


class GdprRequestRead(BaseModel):
    request_id: str
    request_date: str  # UTC, milliseconds: 2021-01-03T16:52:16.051
    status: str
    request_type: str
    trigger_type: str = "api"
    error: str | None = None
    data_url: str | None = None  # reviews, once done: the archive, until it expires
    # Reviews done (Clarion's): when the archive is deleted (CLARION_GDPR_ARCHIVE_DAYS after),
    # and whether it has been, its data_url then gone.
    data_expiry: str | None = None
    data_expired: bool | None = None
    id: GdprId
