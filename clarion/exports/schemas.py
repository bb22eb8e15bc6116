"""Wire format of the export destinations API (a Clarion addition; docs/exports.md)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from clarion.exports.models import ID_COLUMNS, ExportKind
from clarion.formats import WireModel
from clarion.imports.schemas import CredentialsIn, location_url

SCHEMES = ("s3", "gs", "sftp", "ftp", "ftps", "file")
DEFAULT_FILE_NAME = "clarion_{app_id}_{kind}_{date}.csv"
PLACEHOLDERS = ("app_id", "kind", "date", "destination")
DestinationName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
DelayMinutes = Annotated[int, Field(ge=0, le=7 * 24 * 60)]


def _file_name(value: str) -> str:
    names = set(re.findall(r"{([^{}]*)}", value))
    unknown = names - set(PLACEHOLDERS)
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}} (use {PLACEHOLDERS})")
    if "date" not in names:
        raise ValueError("must contain {date}: one file per day")
    if "/" in value or value.startswith("."):
        raise ValueError("a file name, without folders, not starting with '.'")
    try:
        sample = value.format(app_id=1, kind="kind", date="20000101", destination="d")
    except (ValueError, IndexError, KeyError):
        raise ValueError("braces must enclose a placeholder: {app_id} {kind} {date}") from None
    if "20000101" not in sample:
        raise ValueError("must contain {date}: one file per day")
    return value


def _id_columns(value: list[str]) -> list[str]:
    unknown = [name for name in value if name not in ID_COLUMNS]
    if unknown:
        raise ValueError(f"unknown id column {unknown[0]!r} (use {', '.join(ID_COLUMNS)})")
    return [name for name in ID_COLUMNS if name in value]  # the documented order


StorageUrl = Annotated[
    str, Field(max_length=2048), AfterValidator(lambda value: location_url(value, SCHEMES))
]
FileName = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_file_name)]
IdColumns = Annotated[list[str], Field(max_length=3), AfterValidator(_id_columns)]


class DestinationIn(WireModel):
    model_config = ConfigDict(extra="forbid")

    name: DestinationName
    kind: ExportKind
    url: StorageUrl
    credentials: CredentialsIn | None = None
    file_name: FileName = DEFAULT_FILE_NAME
    gzip: bool = False
    id_columns: IdColumns = Field(default_factory=lambda: list(ID_COLUMNS))
    delay_minutes: DelayMinutes = 120
    enabled: bool = True


class DestinationUpdate(WireModel):
    """Fields to change; `credentials` replaces the stored ones as a whole."""

    model_config = ConfigDict(extra="forbid")

    url: StorageUrl | None = None
    credentials: CredentialsIn | None = None
    file_name: FileName | None = None
    gzip: bool | None = None
    id_columns: IdColumns | None = None
    delay_minutes: DelayMinutes | None = None
    enabled: bool | None = None


class DestinationRead(BaseModel):
    name: str
    kind: str
    url: str
    has_credentials: bool
    file_name: str
    gzip: bool
    id_columns: list[str]
    delay_minutes: int
    first_day: str
    enabled: bool
    created: str
    updated: str


class ExportRunRead(BaseModel):
    day: str
    status: str
    attempts: int
    rows: int | None = None
    bytes: int | None = None
    file: str | None = None
    error: str | None = None
    next_attempt: str | None = None
    history: list[dict[str, str | int | float | None]] = Field(default_factory=list)
    started: str | None = None
    finished: str | None = None


# Export API 1.0 (spec §11.1) -------------------------------------------------------------------

# Batch's requests say push_open, its files push_opened: both are taken.
CAMPAIGN_EVENTS = {
    "push_sent": "push_sent",
    "push_open": "push_opened",
    "push_opened": "push_opened",
    "push_error": "push_error",
}
INAPP_EVENTS = {name: name for name in ("inapp_supplied", "inapp_shown", "inapp_clicked")} | {
    "inapp_closed": "inapp_closed"
}
ExportDate = Annotated[str, Field(min_length=3, max_length=32)]


class ExportRequestIn(WireModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: ExportDate = Field(alias="from")
    to: ExportDate
    events: list[str] | None = Field(default=None, max_length=8)
    ids: IdColumns | None = None


class ExportRequestCreated(BaseModel):
    id: str


class ExportRequestRead(BaseModel):
    id: str
    uri: str
    request_date: str
    file_url: str | None = None
    status: str
    completion_date: str | None = None
    error: str | None = None
    request: dict[str, object]
