"""What runs in the background for imports: the ImportRunner polls the sources that are due,
reads each new file into a spool (in a thread) and applies it in one transaction with the record
that it was ingested (clarion.runtime starts it; `clarion imports run` runs it once)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import lzma
import uuid
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import IO

from sqlalchemy import delete, exists, literal, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.audiences import service as audiences
from clarion.audiences.models import AudienceKind
from clarion.audiences.staging import STAGING, IdSpool, drop_staging, load_staging
from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.config import Settings
from clarion.db import insert_ignoring_conflicts, rowcount, transaction
from clarion.health import beat
from clarion.imports.idfile import IdFileError, IdFileFormat
from clarion.imports.models import (
    ImportFile,
    ImportFileMember,
    ImportRun,
    ImportSource,
    OnChange,
    RunStatus,
)
from clarion.imports.schemas import audience_pattern
from clarion.imports.service import READ_CHUNK, IdReader, Progress, _get, open_credentials
from clarion.metrics import note_file_run
from clarion.outbound import OutboundPolicy
from clarion.security import SecretBox
from clarion.storage import RemoteFile, Storage, StorageError

log = logging.getLogger(__name__)


LEASE = timedelta(minutes=30)  # renewed per file, and every minute while a file is read

LEASE_RENEWAL_SECONDS = 60.0

# Reading errors that mean the file itself is broken (a truncated or corrupt archive), not
# that the storage failed: the file is not read again until it changes.
_BROKEN_FILE = (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def read_into(stream: IO[bytes], reader: IdReader, on_bytes: Callable[[int], None]) -> str:
    """Blocking: the whole stream through the reader; returns the content's SHA-256."""
    while chunk := stream.read(READ_CHUNK):
        reader.feed(chunk)
        on_bytes(len(chunk))
    return reader.close()


class ImportRunner:
    """Polls due import sources (a worker's loop) or one source on demand (`clarion imports
    run`). A source is leased while polled, so two processes never poll it at once."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        box: SecretBox,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._box = box
        self._clock = clock
        self._owner = uuid.uuid4().hex
        self._spool_dir = settings.var_dir / "spool"
        self._outbound = OutboundPolicy.from_settings(settings)

    async def poll_due(self, *, limit: int = 10) -> list[ImportRun]:
        """Poll the sources whose time has come; returns the runs they made."""
        now = self._clock()
        async with self._sessions() as session:
            due = list(
                await session.scalars(
                    select(ImportSource.id)
                    .where(ImportSource.enabled == true(), ImportSource.next_poll_at <= now)
                    .order_by(ImportSource.next_poll_at)
                    .limit(limit)
                )
            )
        runs: list[ImportRun] = []
        for source_id in due:
            runs.extend(await self._poll_leased(source_id, due_only=True))
        return _measured(runs)

    async def run_source(
        self, *, app_id: int, name: str, on_progress: Progress | None = None
    ) -> list[ImportRun]:
        """Poll one source now (unless another process is polling it)."""
        async with self._sessions() as session:
            source = await _get(session, app_id, name)
        return _measured(
            await self._poll_leased(source.id, due_only=False, on_progress=on_progress)
        )

    async def _poll_leased(
        self, source_id: int, *, due_only: bool, on_progress: Progress | None = None
    ) -> list[ImportRun]:
        source = await self._claim(source_id, due_only=due_only)
        if source is None:
            return []
        try:
            await self._close_interrupted_runs(source)
            return await self._poll(source, on_progress)
        except Exception as exc:
            # Whatever went wrong, the history says so and the loop goes on to other sources.
            log.exception("import source %s failed", source.id)
            return [await self._record_failure(source, None, None, f"internal error: {exc}")]
        finally:
            async with transaction(self._sessions) as session:
                await session.execute(
                    update(ImportSource)
                    .where(ImportSource.id == source.id, ImportSource.lease_owner == self._owner)
                    .values(
                        lease_owner=None,
                        lease_until=None,
                        next_poll_at=self._clock()
                        + timedelta(seconds=source.poll_interval_seconds),
                    )
                )

    async def _close_interrupted_runs(self, source: ImportSource) -> None:
        """Runs left "running" by a process that stopped mid-file: holding the lease proves
        no one is running them any more."""
        async with transaction(self._sessions) as session:
            await session.execute(
                update(ImportRun)
                .where(
                    ImportRun.source_id == source.id,
                    ImportRun.status == RunStatus.RUNNING.value,
                )
                .values(
                    status=RunStatus.FAILED.value,
                    error="interrupted (the process stopped); tried again at this poll",
                    finished_at=self._clock(),
                )
            )

    async def _claim(self, source_id: int, *, due_only: bool) -> ImportSource | None:
        now = self._clock()
        claim = (
            update(ImportSource)
            .where(
                ImportSource.id == source_id,
                (ImportSource.lease_until.is_(None)) | (ImportSource.lease_until < now),
            )
            .values(lease_owner=self._owner, lease_until=now + LEASE)
        )
        if due_only:
            claim = claim.where(ImportSource.next_poll_at <= now, ImportSource.enabled == true())
        async with transaction(self._sessions) as session:
            if rowcount(await session.execute(claim)) != 1:
                return None
            return await session.get(ImportSource, source_id)

    async def _poll(self, source: ImportSource, on_progress: Progress | None) -> list[ImportRun]:
        try:
            storage = Storage(
                source.url,
                open_credentials(source.credentials, self._box),
                ca_file=self._settings.connector_ca_file or None,
                local_roots=tuple(
                    root / str(source.app_id) for root in self._settings.resolved_import_local_roots
                ),
                outbound=self._outbound,
            )
        except StorageError as exc:
            return [await self._record_failure(source, None, None, str(exc))]
        try:
            try:
                remote_files = await asyncio.to_thread(storage.list, source.pattern)
            except StorageError as exc:
                # Unreachable, refused, missing folder: reported, and tried again next poll.
                return [await self._record_failure(source, None, None, str(exc))]
            async with self._sessions() as session:
                known = {
                    file.path: file
                    for file in await session.scalars(
                        select(ImportFile).where(ImportFile.source_id == source.id)
                    )
                }
            runs = []
            for remote in remote_files:
                seen = known.get(remote.path)
                if seen is not None and remote.fingerprint in (
                    seen.fingerprint if seen.ingested_at else None,
                    seen.failed_fingerprint,
                ):
                    continue  # ingested (or found broken) as it is now: never twice
                runs.append(await self._ingest(source, storage, remote, on_progress))
            return runs
        finally:
            await asyncio.to_thread(storage.close)

    async def _ingest(
        self,
        source: ImportSource,
        storage: Storage,
        remote: RemoteFile,
        on_progress: Progress | None,
    ) -> ImportRun:
        try:
            audience_name = _audience_for(source, remote.name)
        except ValueError as exc:  # a pattern stored before RE2 read them
            reason = f"audience_pattern: {exc}; change the source's audience_pattern"
            return await self._record_failure(source, remote, None, reason, broken=True)
        if audience_name is None:
            reason = f"the file name does not match audience_pattern {source.audience_pattern!r}"
            return await self._record_failure(source, remote, None, reason, broken=True)
        run = await self._start_run(source, remote, audience_name)
        file_format = IdFileFormat(
            kind=AudienceKind(source.id_kind),
            header=source.header,
            delimiter=source.delimiter,
            column=source.id_column,
            encoding=source.encoding,
        )
        loop = asyncio.get_running_loop()
        renewed = [self._clock.monotonic()]
        with IdSpool(self._spool_dir) as spool:
            reader = IdReader(file_format, spool)

            def read() -> str:
                def advance(count: int) -> None:
                    if on_progress is not None:
                        on_progress(remote.name, count, remote.size)
                    if self._clock.monotonic() - renewed[0] > LEASE_RENEWAL_SECONDS:
                        # A long read keeps the source: renewed from this thread, on the loop.
                        renewed[0] = self._clock.monotonic()
                        asyncio.run_coroutine_threadsafe(self._renew_lease(source), loop)

                with storage.open_read(remote.path) as stream:
                    digest = read_into(stream, reader, advance)
                if storage.fingerprint(remote.path) != remote.fingerprint:
                    raise StorageError(
                        f"{remote.path} changed while it was read (still being uploaded?); "
                        "read again at the next poll"
                    )
                return digest

            try:
                sha256 = await asyncio.to_thread(read)
            except IdFileError as exc:
                return await self._finish(run, reader, error=str(exc), broken=remote)
            except StorageError as exc:
                return await self._finish(run, reader, error=str(exc))
            except _BROKEN_FILE as exc:
                error = f"the file is truncated or corrupt ({type(exc).__name__}: {exc})"
                return await self._finish(run, reader, error=error, broken=remote)
            except Exception as exc:
                # A connection lost mid-file and the like: reported, retried next poll.
                error = f"reading failed ({type(exc).__name__}: {exc})"
                return await self._finish(run, reader, error=error)
            _count(run, reader)
            try:
                await self._apply(source, remote, audience_name, run, spool, sha256)
            except Exception as exc:
                log.exception("import run %s could not be applied", run.id)
                return await self._finish(run, reader, error=f"could not apply: {exc}")
        if source.delete_after:
            try:
                await asyncio.to_thread(storage.delete, remote.path)
            except StorageError as exc:
                run.error = f"ingested, but not deleted: {exc}"
        return await self._finish(run, reader)

    async def _apply(
        self,
        source: ImportSource,
        remote: RemoteFile,
        audience_name: str,
        run: ImportRun,
        spool: IdSpool,
        sha256: str,
    ) -> None:
        """One transaction: the audience change and the record that the file was ingested."""
        kind = AudienceKind(source.id_kind)
        async with transaction(self._sessions) as session:
            file = await _file_row(session, source.id, remote.path)
            now = self._clock()
            if file.sha256 == sha256 and file.ingested_at is not None:
                run.status = RunStatus.UNCHANGED.value  # re-uploaded as it was
            else:
                if source.on_change == OnChange.APPLY_CHANGES.value:
                    await load_staging(session, spool)
                    changed = await _apply_changes(session, source, file, audience_name, kind, now)
                    await drop_staging(session)
                    run.indexing_token, run.nb_ids = changed.indexing_token, changed.nb_ids
                    run.added, run.removed = changed.added, changed.removed
                else:
                    run.indexing_token, run.nb_ids = await audiences.replace_from_spool(
                        session,
                        app_id=source.app_id,
                        name=audience_name,
                        kind=kind,
                        spool=spool,
                        now=now,
                    )
                run.status = RunStatus.SUCCEEDED.value
            file.fingerprint = remote.fingerprint
            file.sha256 = sha256
            file.audience_name = audience_name
            file.ingested_at = now
            file.failed_fingerprint = None
            # The run's outcome commits with the change itself: never one without the other.
            await session.merge(run)

    async def _renew_lease(self, source: ImportSource) -> None:
        async with transaction(self._sessions) as session:
            await session.execute(
                update(ImportSource)
                .where(ImportSource.id == source.id, ImportSource.lease_owner == self._owner)
                .values(lease_until=self._clock() + LEASE)
            )
        beat()  # a long import is a loop making progress (clarion.health)

    async def _start_run(
        self, source: ImportSource, remote: RemoteFile, audience_name: str
    ) -> ImportRun:
        async with transaction(self._sessions) as session:
            run = ImportRun(
                source_id=source.id,
                path=remote.path,
                audience_name=audience_name,
                status=RunStatus.RUNNING.value,
                started_at=self._clock(),
            )
            session.add(run)
        await self._renew_lease(source)  # a source with many large files outlasts one lease
        return run

    async def _finish(
        self,
        run: ImportRun,
        reader: IdReader,
        *,
        error: str | None = None,
        broken: RemoteFile | None = None,
    ) -> ImportRun:
        _count(run, reader)
        if error is not None:
            run.status = RunStatus.FAILED.value
            run.error = error[:1024]
        run.finished_at = self._clock()
        async with transaction(self._sessions) as session:
            await session.merge(run)
            if broken is not None:
                await _mark_broken(session, run.source_id, broken)
        return run

    async def _record_failure(
        self,
        source: ImportSource,
        remote: RemoteFile | None,
        audience_name: str | None,
        error: str,
        *,
        broken: bool = False,
    ) -> ImportRun:
        now = self._clock()
        run = ImportRun(
            source_id=source.id,
            path=remote.path if remote else None,
            audience_name=audience_name,
            status=RunStatus.FAILED.value,
            error=error[:1024],
            started_at=now,
            finished_at=now,
            first_rejections=[],
        )
        async with transaction(self._sessions) as session:
            session.add(run)
            if broken and remote is not None:
                await _mark_broken(session, source.id, remote)
        return run


def _measured(runs: list[ImportRun]) -> list[ImportRun]:
    """Counts the finished runs in the metrics (by status, with their duration)."""
    for run in runs:
        if run.finished_at is not None:
            seconds = (run.finished_at - run.started_at).total_seconds()
            note_file_run("import", run.status, seconds)
    return runs


async def _apply_changes(
    session: AsyncSession,
    source: ImportSource,
    file: ImportFile,
    audience_name: str,
    kind: AudienceKind,
    now: datetime,
) -> audiences.MembersChanged:
    """Ids new to the file are added to the audience, ids gone from it removed; the file's
    content is then remembered for its next change."""
    stands = await audiences.identity(session, app_id=source.app_id, name=audience_name)
    if stands is None or stands != (file.audience_id, file.audience_generation):
        # The audience was deleted, replaced or renamed since: nothing of the file is in it.
        await session.execute(delete(ImportFileMember).where(ImportFileMember.file_id == file.id))
    previous = ImportFileMember
    in_previous = exists().where(
        previous.file_id == file.id, previous.member_id == STAGING.c.member_id
    )
    in_file = exists().where(STAGING.c.member_id == previous.member_id)
    result = await audiences.change_members(
        session,
        app_id=source.app_id,
        name=audience_name,
        kind=kind,
        added=select(STAGING.c.member_id).where(~in_previous),
        removed=select(previous.member_id).where(previous.file_id == file.id, ~in_file),
        now=now,
    )
    await session.execute(delete(ImportFileMember).where(ImportFileMember.file_id == file.id))
    await session.execute(
        insert_ignoring_conflicts(
            session, ImportFileMember, index=["file_id", "member_id"]
        ).from_select(
            ["file_id", "member_id"],
            select(literal(file.id), STAGING.c.member_id).where(true()),
        )
    )
    file.audience_id, file.audience_generation = await audiences.identity(
        session, app_id=source.app_id, name=audience_name
    ) or (None, None)
    return result


def _count(run: ImportRun, reader: IdReader) -> None:
    run.lines_read = reader.parser.lines_read
    run.ids_accepted = reader.parser.accepted
    run.ids_rejected = reader.parser.rejected
    run.first_rejections = reader.rejections()


async def _file_row(session: AsyncSession, source_id: int, path: str) -> ImportFile:
    await session.execute(
        insert_ignoring_conflicts(session, ImportFile, index=["source_id", "path"]).values(
            source_id=source_id, path=path
        )
    )
    file = await session.scalar(
        select(ImportFile)
        .where(ImportFile.source_id == source_id, ImportFile.path == path)
        .with_for_update()
    )
    assert file is not None
    return file


async def _mark_broken(session: AsyncSession, source_id: int, remote: RemoteFile) -> None:
    file = await _file_row(session, source_id, remote.path)
    file.failed_fingerprint = remote.fingerprint


def _audience_for(source: ImportSource, file_name: str) -> str | None:
    if source.audience_name is not None:
        return source.audience_name
    assert source.audience_pattern is not None
    compiled = audience_pattern(source.audience_pattern)
    match = compiled.fullmatch(file_name)
    if match is None:
        return None
    name = match.group("name") if "name" in compiled.groupindex else match.group(1)
    return name or None
