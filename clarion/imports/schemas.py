"""Wire format of the import sources API (a Clarion addition; Batch sets these up by hand).

A source answers the questions of Batch's flat-file checklist: where the files are (URL and
credentials), which files (a name pattern), which audience each feeds (a fixed name or a
pattern over the file name), how a line reads (header, delimiter, id column, id type), whether
to delete a file once ingested, and what a changed file means (replace, or apply its changes).
"""

from __future__ import annotations

import codecs
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clarion.audiences.models import AudienceKind
from clarion.formats import WireModel
from clarion.imports.models import OnChange
from clarion.storage import SCHEMES

SourceName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
Delimiter = Literal[",", ";", "\t", "|"]
IdColumn = Annotated[str, Field(min_length=1, max_length=255)]
PollInterval = Annotated[int, Field(ge=60, le=7 * 24 * 3600)]


class CredentialsIn(BaseModel):
    """Stored encrypted; never returned or logged."""

    model_config = ConfigDict(extra="forbid")

    username: str | None = Field(default=None, max_length=255)
    password: str | None = Field(default=None, max_length=1024)
    access_key: str | None = Field(default=None, max_length=255)
    secret_key: str | None = Field(default=None, max_length=1024)
    region: str | None = Field(default=None, max_length=64)
    endpoint_url: str | None = Field(default=None, max_length=2048)
    private_key: str | None = Field(default=None, max_length=16384)
    host_key: str | None = Field(default=None, max_length=8192)
    service_account: str | None = Field(default=None, max_length=16384)  # GCS, JSON key


def location_url(value: str, schemes: tuple[str, ...]) -> str:
    """A storage URL (import source, export destination): a known scheme, a host or bucket,
    and no password (credentials are stored apart, encrypted)."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"the scheme must be one of {', '.join(schemes)}")
    if parts.password:
        raise ValueError("put the password in credentials, not in the URL")
    if parts.scheme.lower() != "file" and not parts.netloc:
        raise ValueError("no host (or bucket) in the URL")
    return value


_RE2 = re2.Options()
_RE2.log_errors = False  # a tenant's bad pattern is their 400, not a line in the server's log


def audience_pattern(pattern: str) -> re2._Regexp[str]:
    r"""A source's audience_pattern, compiled by RE2: matched in time linear in the file name
    whatever the pattern. Python's re backtracks: `(?P<name>(a|aa)+)\.csv` took 3.7 s on a file
    named with 36 a's, x1.6 per further one (hours at 50), stalling the process that polls the
    source. RE2 refuses what only backtracking does (backreferences, lookaround): ValueError."""
    try:
        compiled = re2.compile(pattern, _RE2)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"not a regular expression RE2 reads ({reason})") from None
    if compiled.groups == 0:
        raise ValueError("needs a group, (?P<name>...), that captures the audience's name")
    return compiled


class _SourceFields(WireModel):
    """Checks shared by creation and update (fields absent from an update are None)."""

    @field_validator("url", check_fields=False)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else location_url(value, SCHEMES)

    @field_validator("audience_pattern", check_fields=False)
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            audience_pattern(value)
        return value

    @field_validator("encoding", check_fields=False)
    @classmethod
    def _encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}") from None
            if value.lower().replace("-", "").replace("_", "").startswith(("utf16", "utf32")):
                raise ValueError("the encoding must keep line breaks as one byte (not UTF-16/32)")
        return value


class ImportSourceIn(_SourceFields):
    model_config = ConfigDict(extra="forbid")

    name: SourceName
    url: str = Field(max_length=2048)
    credentials: CredentialsIn | None = None
    pattern: str = Field(default="*", min_length=1, max_length=255)
    audience_name: str | None = Field(default=None, min_length=1, max_length=255)
    audience_pattern: str | None = Field(default=None, min_length=1, max_length=255)
    id_type: AudienceKind
    header: bool = True
    delimiter: Delimiter = ","
    id_column: IdColumn = "1"
    encoding: str = Field(default="utf-8", max_length=32)
    on_change: OnChange = OnChange.REPLACE
    delete_after: bool = False
    poll_interval_seconds: PollInterval = 3600
    enabled: bool = True

    @field_validator("id_column", mode="before")
    @classmethod
    def _column_number(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _one_audience_rule(self) -> ImportSourceIn:
        if (self.audience_name is None) == (self.audience_pattern is None):
            raise ValueError("give exactly one of audience_name and audience_pattern")
        return self


class ImportSourceUpdate(_SourceFields):
    """Fields to change; `credentials` replaces the stored ones as a whole."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2048)
    credentials: CredentialsIn | None = None
    pattern: str | None = Field(default=None, min_length=1, max_length=255)
    audience_name: str | None = Field(default=None, min_length=1, max_length=255)
    audience_pattern: str | None = Field(default=None, min_length=1, max_length=255)
    id_type: AudienceKind | None = None
    header: bool | None = None
    delimiter: Delimiter | None = None
    id_column: IdColumn | None = None
    encoding: str | None = Field(default=None, max_length=32)
    on_change: OnChange | None = None
    delete_after: bool | None = None
    poll_interval_seconds: PollInterval | None = None
    enabled: bool | None = None

    @field_validator("id_column", mode="before")
    @classmethod
    def _column_number(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _one_audience_rule(self) -> ImportSourceUpdate:
        if self.audience_name is not None and self.audience_pattern is not None:
            raise ValueError("give at most one of audience_name and audience_pattern")
        return self


class ImportSourceRead(BaseModel):
    name: str
    url: str
    has_credentials: bool
    pattern: str
    audience_name: str | None
    audience_pattern: str | None
    id_type: str
    header: bool
    delimiter: str
    id_column: str
    encoding: str
    on_change: str
    delete_after: bool
    poll_interval_seconds: int
    enabled: bool
    next_poll: str
    created: str
    updated: str


class RejectionRead(BaseModel):
    line: int
    reason: str


class ImportRunRead(BaseModel):
    id: int
    file: str | None
    audience: str | None
    status: str
    lines_read: int
    ids_accepted: int
    ids_rejected: int
    first_rejections: list[RejectionRead]
    nb_ids: int | None = None
    added: int | None = None
    removed: int | None = None
    error: str | None = None
    indexing_token: str | None = None
    started: str
    finished: str | None = None


class RunRequested(BaseModel):
    name: str
    next_poll: str


class UploadResult(BaseModel):
    """What a CSV upload did to the audience."""

    indexing_token: str
    nb_ids: int
    lines_read: int
    ids_rejected: int
    first_rejections: list[RejectionRead]
