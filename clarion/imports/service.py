"""Flat-file audience imports: import sources (CRUD) and their runs, and the CSV upload of the
Custom Audience API. Polling the sources and ingesting their files: clarion.imports.tasks.

A file goes through two steps. Reading (in a thread: the protocols block, and parsing ten
million lines would stall the event loop) streams it through the id parser into a local
spool, hashing it on the way; a file that is malformed stops here and nothing is applied.
Applying replaces the audience from the spool (clarion.audiences.staging) or applies the
file's changes, in one transaction with the record that the file was ingested and the run's
outcome, so a crash leaves all or none. The CSV upload of the API (and the dashboard's) parses
in a thread too, 256 KiB of the body at a time as it arrives. See docs/imports.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.audiences import service as audiences
from clarion.audiences.staging import IdSpool
from clarion.errors import MalformedParameterError, NotFoundError
from clarion.formats import wire_date
from clarion.imports.idfile import IdFileError, IdFileFormat, IdFileParser
from clarion.imports.models import ImportFile, ImportFileMember, ImportRun, ImportSource
from clarion.imports.schemas import (
    CredentialsIn,
    ImportRunRead,
    ImportSourceIn,
    ImportSourceRead,
    ImportSourceUpdate,
    RejectionRead,
    UploadResult,
)
from clarion.outbound import OutboundPolicy
from clarion.security import SecretBox
from clarion.storage import OBJECT_STORES, StorageCredentials

log = logging.getLogger(__name__)

# Small enough that its buffers do not fragment the heap: 1 MiB reads left a 10M-line import
# at 204 MB of RSS, 256 KiB at 171 MB, for the same time.
READ_CHUNK = 256 * 1024
Progress = Callable[[str, int, int | None], None]  # file name, bytes just read, file size


# Sources ---------------------------------------------------------------------------------------


async def create_source(
    session: AsyncSession,
    *,
    app_id: int,
    body: ImportSourceIn,
    box: SecretBox,
    outbound: OutboundPolicy,
    now: datetime,
) -> ImportSource:
    check_location(body.url, body.credentials, outbound)
    if await _find(session, app_id, body.name) is not None:
        raise MalformedParameterError(f"name: an import source named {body.name!r} exists")
    source = ImportSource(
        app_id=app_id,
        name=body.name,
        credentials=seal_credentials(body.credentials, box),
        next_poll_at=now,
        created_at=now,
        updated_at=now,
        **_settable(body.model_dump(exclude={"name", "credentials"})),
    )
    session.add(source)
    await session.flush()
    return source


async def update_source(
    session: AsyncSession,
    *,
    app_id: int,
    name: str,
    body: ImportSourceUpdate,
    box: SecretBox,
    outbound: OutboundPolicy,
    now: datetime,
) -> ImportSource:
    check_location(body.url, body.credentials, outbound)
    source = await _get(session, app_id, name)
    change_credentials(source, body, box)
    changes = body.model_dump(exclude_unset=True, exclude={"credentials"})
    # Naming the audience one way forgets the other way.
    if changes.get("audience_name") is not None:
        changes["audience_pattern"] = None
    if changes.get("audience_pattern") is not None:
        changes["audience_name"] = None
    for column, value in _settable(changes).items():
        if value is None and column not in ("audience_name", "audience_pattern"):
            continue  # null for a required setting: left as it is
        setattr(source, column, value)
    if source.audience_name is None and source.audience_pattern is None:
        raise MalformedParameterError("audience_name: give audience_name or audience_pattern")
    source.updated_at = now
    # New settings may read a file that failed with the old ones: give those files a chance.
    await session.execute(
        update(ImportFile).where(ImportFile.source_id == source.id).values(failed_fingerprint=None)
    )
    return source


class Located(Protocol):
    """An import source or an export destination: a URL and its sealed credentials."""

    url: str
    credentials: str | None


class LocationUpdate(Protocol):
    @property
    def url(self) -> str | None: ...
    @property
    def credentials(self) -> CredentialsIn | None: ...
    @property
    def model_fields_set(self) -> set[str]: ...


def check_location(
    url: str | None, credentials: CredentialsIn | None, outbound: OutboundPolicy
) -> None:
    """Refuse at once (400, naming the field) what the outbound policy would refuse on
    connecting, where the URL alone tells: a host written as a refused address. Host names
    are checked on connecting, on the addresses they resolve to then."""
    if url is not None:
        scheme = urlsplit(url).scheme.lower()
        # s3://name and gs://name name a bucket, not a host; file:// has its own folders.
        refusal = None if scheme in (*OBJECT_STORES, "file") else outbound.url_refusal(url)
        if refusal is not None:
            raise MalformedParameterError(f"url: {refusal}")
    if credentials is None:
        return
    endpoint = credentials.endpoint_url
    if endpoint is not None:
        if urlsplit(endpoint).scheme.lower() not in ("http", "https"):
            raise MalformedParameterError(
                "credentials.endpoint_url: must be an http:// or https:// URL"
            )
        refusal = outbound.url_refusal(endpoint)
        if refusal is not None:
            raise MalformedParameterError(f"credentials.endpoint_url: {refusal}")
    token_uri = _token_uri(credentials.service_account)
    if token_uri is not None:
        refusal = outbound.url_refusal(token_uri, https_only=True)
        if refusal is not None:
            raise MalformedParameterError(f"credentials.service_account: token_uri {refusal}")


def _token_uri(service_account: str | None) -> str | None:
    if service_account is None:
        return None
    try:
        document = json.loads(service_account)
    except ValueError:
        return None  # not a key: refused when the storage is reached
    token_uri = document.get("token_uri") if isinstance(document, dict) else None
    return token_uri if isinstance(token_uri, str) else None


def change_credentials(target: Located, body: LocationUpdate, box: SecretBox) -> None:
    """Apply an update's credentials, if it gives any. Stored credentials are never sent to a
    host they were not given for: moving to another scheme or host needs them again."""
    given = "credentials" in body.model_fields_set
    if body.url is not None and target.credentials is not None and not given:
        old, new = urlsplit(target.url), urlsplit(body.url)
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            raise MalformedParameterError(
                "credentials: give the credentials again to move to another scheme or host"
            )
    if given:
        target.credentials = seal_credentials(body.credentials, box)


async def delete_source(session: AsyncSession, *, app_id: int, name: str) -> None:
    """The source and its history; the audiences it filled stay."""
    source = await _get(session, app_id, name)
    files = select(ImportFile.id).where(ImportFile.source_id == source.id)
    await session.execute(delete(ImportFileMember).where(ImportFileMember.file_id.in_(files)))
    await session.execute(delete(ImportFile).where(ImportFile.source_id == source.id))
    await session.execute(delete(ImportRun).where(ImportRun.source_id == source.id))
    await session.delete(source)


async def describe_source(session: AsyncSession, *, app_id: int, name: str) -> ImportSourceRead:
    return read_source(await _get(session, app_id, name))


async def list_sources(session: AsyncSession, *, app_id: int | None) -> list[ImportSourceRead]:
    query = select(ImportSource).order_by(ImportSource.app_id, ImportSource.name)
    if app_id is not None:
        query = query.where(ImportSource.app_id == app_id)
    return [read_source(source) for source in await session.scalars(query)]


async def request_run(
    session: AsyncSession, *, app_id: int, name: str, now: datetime
) -> ImportSource:
    """Poll the source at the next check of a worker, whatever its interval."""
    source = await _get(session, app_id, name)
    source.next_poll_at = now
    return source


async def list_runs(
    session: AsyncSession, *, app_id: int, name: str, limit: int
) -> list[ImportRunRead]:
    """Newest first."""
    source = await _get(session, app_id, name)
    runs = await session.scalars(
        select(ImportRun)
        .where(ImportRun.source_id == source.id)
        .order_by(ImportRun.started_at.desc(), ImportRun.id.desc())
        .limit(limit)
    )
    return [read_run(run) for run in runs]


def read_source(source: ImportSource) -> ImportSourceRead:
    return ImportSourceRead(
        name=source.name,
        url=source.url,
        has_credentials=source.credentials is not None,
        pattern=source.pattern,
        audience_name=source.audience_name,
        audience_pattern=source.audience_pattern,
        id_type=source.id_kind,
        header=source.header,
        delimiter=source.delimiter,
        id_column=source.id_column,
        encoding=source.encoding,
        on_change=source.on_change,
        delete_after=source.delete_after,
        poll_interval_seconds=source.poll_interval_seconds,
        enabled=source.enabled,
        next_poll=wire_date(source.next_poll_at),
        created=wire_date(source.created_at),
        updated=wire_date(source.updated_at),
    )


def read_run(run: ImportRun) -> ImportRunRead:
    return ImportRunRead(
        id=run.id,
        file=run.path,
        audience=run.audience_name,
        status=run.status,
        lines_read=run.lines_read,
        ids_accepted=run.ids_accepted,
        ids_rejected=run.ids_rejected,
        first_rejections=[RejectionRead(**item) for item in run.first_rejections or []],
        nb_ids=run.nb_ids,
        added=run.added,
        removed=run.removed,
        error=run.error,
        indexing_token=run.indexing_token,
        started=wire_date(run.started_at),
        finished=wire_date(run.finished_at) if run.finished_at else None,
    )


# Reading a file --------------------------------------------------------------------------------


@dataclass
class IdReader:
    """Bytes in, valid ids out to the spool, the content hashed on the way."""

    format: IdFileFormat
    spool: IdSpool
    parser: IdFileParser = field(init=False)
    _digest: hashlib._Hash = field(init=False)

    def __post_init__(self) -> None:
        self.parser = IdFileParser(self.format)
        self._digest = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.spool.write(self.parser.feed(chunk))

    def close(self) -> str:
        """Ends the file; returns its SHA-256. Fails if no line held a valid id: an export gone
        wrong must not empty an audience (delete the audience to empty it)."""
        self.spool.write(self.parser.close())
        if self.parser.accepted == 0:
            if self.parser.first_rejections:
                first = self.parser.first_rejections[0]
                raise IdFileError(first.line, f"no valid id in the file ({first.reason})")
            raise IdFileError(self.parser.lines_read, "no id in the file")
        return self._digest.hexdigest()

    def rejections(self) -> list[dict[str, int | str]]:
        return [{"line": r.line, "reason": r.reason} for r in self.parser.first_rejections]


async def upload_audience(
    session: AsyncSession,
    *,
    app_id: int,
    name: str,
    format: IdFileFormat,
    chunks: AsyncIterator[bytes],
    spool_dir: Path,
    now: datetime,
) -> UploadResult:
    """Create or replace an audience from an uploaded file of ids (the dashboard's path)."""
    with IdSpool(spool_dir) as spool:
        reader = IdReader(format, spool)
        try:
            await _read_upload(chunks, reader)
        except IdFileError as exc:
            raise MalformedParameterError(f"file: {exc}") from None
        token, nb_ids = await audiences.replace_from_spool(
            session, app_id=app_id, name=name, kind=format.kind, spool=spool, now=now
        )
    return UploadResult(
        indexing_token=token,
        nb_ids=nb_ids,
        lines_read=reader.parser.lines_read,
        ids_rejected=reader.parser.rejected,
        first_rejections=[RejectionRead(**item) for item in reader.rejections()],
    )


async def _read_upload(chunks: AsyncIterator[bytes], reader: IdReader) -> None:
    """The body through the reader, parsed and spooled in a thread so that the loop serves other
    calls meanwhile. Gathered READ_CHUNK at a time: a thread hop costs ~100-200 us, a quarter of
    parsing the 64 KiB or less that uvicorn hands over per message (~0.7 ms), 7% of 256 KiB."""
    gathered: list[bytes] = []
    size = 0
    async for chunk in chunks:
        gathered.append(chunk)
        size += len(chunk)
        if size >= READ_CHUNK:
            await asyncio.to_thread(reader.feed, b"".join(gathered))
            gathered.clear()
            size = 0
    await asyncio.to_thread(reader.feed, b"".join(gathered))
    await asyncio.to_thread(reader.close)


# Polling sources -------------------------------------------------------------------------------


def seal_credentials(credentials: CredentialsIn | None, box: SecretBox) -> str | None:
    """Storage credentials as stored: encrypted JSON (import sources, export destinations)."""
    if credentials is None:
        return None
    values = credentials.model_dump(exclude_none=True)
    return box.encrypt(json.dumps(values).encode()) if values else None


def open_credentials(sealed: str | None, box: SecretBox) -> StorageCredentials:
    if sealed is None:
        return StorageCredentials()
    return StorageCredentials(**json.loads(box.decrypt(sealed)))


def _settable(values: dict[str, object]) -> dict[str, object]:
    """Wire names to column names."""
    if "id_type" in values:
        values["id_kind"] = values.pop("id_type")
    return values


async def _find(session: AsyncSession, app_id: int, name: str) -> ImportSource | None:
    return await session.scalar(
        select(ImportSource).where(ImportSource.app_id == app_id, ImportSource.name == name)
    )


async def _get(session: AsyncSession, app_id: int, name: str) -> ImportSource:
    source = await _find(session, app_id, name)
    if source is None:
        raise NotFoundError(f"no import source {name!r}")
    return source
