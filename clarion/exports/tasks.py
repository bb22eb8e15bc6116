"""What runs in the background for exports: the ExportRunner produces each (destination, day)
exactly once (`clarion exports run` runs it on demand), and process_requests produces the files
that Export API 1.0 requests ask for. clarion.runtime starts both.

Producing a day: claim the (destination, day) run (a lease, so two processes never both produce
it), write the file locally from one streamed query, upload it under a temporary name and
rename it (clarion.storage), then record the run as succeeded. A failure is recorded with
its reason and the day is due again after a growing delay; a crash leaves a lease that runs out,
and the day is produced again, from the same events, under the same name. docs/exports.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.models import App
from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.config import Settings
from clarion.db import insert_ignoring_conflicts, rowcount, transaction
from clarion.errors import MalformedParameterError
from clarion.exports.files import export_query, request_query, write_export
from clarion.exports.models import (
    ExportDestination,
    ExportKind,
    ExportRequest,
    ExportRun,
    ExportStatus,
    RequestKind,
    RequestStatus,
)
from clarion.exports.service import BACKFILL_DAYS, _get, due_days, file_name, last_complete_day
from clarion.formats import wire_date
from clarion.health import beat
from clarion.imports.service import open_credentials
from clarion.metrics import note_file_run
from clarion.outbound import OutboundPolicy
from clarion.security import SecretBox
from clarion.storage import Storage, StorageError

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=30)
RETRY_FIRST = timedelta(minutes=1)
RETRY_MAX = timedelta(hours=1)
_UPLOAD_CHUNK = 256 * 1024
STALE_PENDING = timedelta(minutes=30)  # a request PENDING this long lost its worker


class ExportRunner:
    """Produces due days (a worker's loop) or chosen days (`clarion exports run --day`)."""

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

    async def run_due(self) -> list[ExportRun]:
        """Every due day of every enabled destination not produced yet (and not waiting for
        its next attempt); returns the runs it made."""
        now = self._clock()
        async with self._sessions() as session:
            destinations = list(
                await session.scalars(
                    select(ExportDestination).where(ExportDestination.enabled.is_(true()))
                )
            )
            done = {
                (run.destination_id, run.day): run
                for run in await session.scalars(
                    select(ExportRun).where(
                        ExportRun.day >= last_complete_day(now, 0) - timedelta(BACKFILL_DAYS + 1)
                    )
                )
            }
        runs = []
        for destination in destinations:
            for day in due_days(destination, now):
                run = done.get((destination.id, day))
                if run is not None and not _may_start(run, now):
                    continue
                produced = await self.run_day(destination, day, force=False)
                if produced is not None:
                    runs.append(produced)
        return runs

    async def run_days(
        self,
        *,
        app_id: int,
        name: str,
        days: list[date],
        on_progress: Callable[[date], None] | None = None,
    ) -> list[ExportRun]:
        """Produce these days again, on purpose (they must have ended)."""
        latest = last_complete_day(self._clock(), 0)
        future = [day for day in days if day > latest]
        if future:
            raise MalformedParameterError(f"day: {future[0].isoformat()} has not ended yet")
        async with self._sessions() as session:
            destination = await _get(session, app_id, name)
        runs = []
        for day in days:
            run = await self.run_day(destination, day, force=True)
            if run is not None:
                runs.append(run)
            if on_progress is not None:
                on_progress(day)
        return runs

    async def run_day(
        self, destination: ExportDestination, day: date, *, force: bool
    ) -> ExportRun | None:
        """Produce one day's file; None when another process holds it (or, without `force`,
        when it is done or waiting for its next attempt)."""
        started = self._clock.monotonic()
        run = await self._run_day(destination, day, force=force)
        if run is not None:
            note_file_run("export", run.status, self._clock.monotonic() - started)
        return run

    async def _run_day(
        self, destination: ExportDestination, day: date, *, force: bool
    ) -> ExportRun | None:
        name = file_name(destination, day)
        run = await self._claim(destination, day, force=force)
        if run is None:
            return None
        path = self._spool_dir / f"export-{run.id}-{uuid.uuid4().hex}"
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        path.touch()
        # The upload follows the file as it is written (FileTail), so that the query and the
        # upload overlap: each took about half of a 10M-event day when they ran in turn.
        tail = FileTail(path)
        upload = asyncio.create_task(asyncio.to_thread(self._upload, destination, name, iter(tail)))
        renewing = asyncio.create_task(self._keep_lease(run))
        try:
            started = self._clock.monotonic()
            try:
                rows = await self._write(destination, day, path)
            except BaseException:
                tail.abandon()
                with contextlib.suppress(Exception):
                    await upload
                raise
            written = self._clock.monotonic()
            tail.finish()
            uploaded = await upload
            timings = {
                "write_seconds": round(written - started, 1),
                "upload_done_seconds": round(self._clock.monotonic() - started, 1),
            }
        except StorageError as exc:
            return await self._failed(run, str(exc))
        except Exception as exc:
            log.exception("export of %s for %s failed", destination.name, day)
            return await self._failed(run, f"{type(exc).__name__}: {exc}")
        else:
            size = path.stat().st_size
            return await self._succeeded(run, rows=rows, size=size, path=uploaded, timings=timings)
        finally:
            renewing.cancel()
            path.unlink(missing_ok=True)

    async def _keep_lease(self, run: ExportRun) -> None:
        """Renew the run's lease every minute while the file is produced: a slow upload must
        not let another process take the same day."""
        while True:
            await asyncio.sleep(60)
            async with transaction(self._sessions) as session:
                await session.execute(
                    update(ExportRun)
                    .where(ExportRun.id == run.id, ExportRun.lease_owner == self._owner)
                    .values(lease_until=self._clock() + LEASE)
                )
            beat()  # a long export is a loop making progress (clarion.health)

    async def _write(self, destination: ExportDestination, day: date, path: Path) -> int:
        async with self._sessions() as session:
            platform = await session.scalar(
                select(App.platform).where(App.id == destination.app_id)
            )
            query = export_query(
                ExportKind(destination.kind),
                app_id=destination.app_id,
                platform=platform or "",
                day=day,
                id_columns=destination.id_columns,
            )
            return await write_export(session, query, path, compress=destination.gzip)

    def _upload(self, destination: ExportDestination, name: str, chunks: Iterator[bytes]) -> str:
        with Storage(
            destination.url,
            open_credentials(destination.credentials, self._box),
            ca_file=self._settings.connector_ca_file or None,
            local_roots=tuple(
                root / str(destination.app_id)
                for root in self._settings.resolved_export_local_roots
            ),
            outbound=self._outbound,
        ) as storage:
            return storage.write(name, chunks)

    async def _claim(
        self, destination: ExportDestination, day: date, *, force: bool
    ) -> ExportRun | None:
        now = self._clock()
        async with transaction(self._sessions) as session:
            await session.execute(
                insert_ignoring_conflicts(
                    session, ExportRun, index=["destination_id", "day"]
                ).values(
                    destination_id=destination.id,
                    day=day,
                    status=ExportStatus.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                )
            )
            waiting = ExportRun.status.in_([ExportStatus.PENDING.value, ExportStatus.FAILED.value])
            startable = (waiting & (ExportRun.next_attempt_at <= now)) | (
                (ExportRun.status == ExportStatus.RUNNING.value) & (ExportRun.lease_until < now)
            )
            if force:  # on purpose: done, failed (backoff or not) or pending, unless held
                startable = startable | ExportRun.status.in_(
                    [
                        ExportStatus.SUCCEEDED.value,
                        ExportStatus.FAILED.value,
                        ExportStatus.PENDING.value,
                    ]
                )
            claimed = await session.execute(
                update(ExportRun)
                .where(ExportRun.destination_id == destination.id, ExportRun.day == day, startable)
                .values(
                    status=ExportStatus.RUNNING.value,
                    lease_owner=self._owner,
                    lease_until=now + LEASE,
                    attempts=ExportRun.attempts + 1,
                    started_at=now,
                )
            )
            if rowcount(claimed) != 1:
                return None
            return await session.scalar(
                select(ExportRun).where(
                    ExportRun.destination_id == destination.id, ExportRun.day == day
                )
            )

    async def _succeeded(
        self, run: ExportRun, *, rows: int, size: int, path: str, timings: dict[str, float]
    ) -> ExportRun:
        return await self._finish(
            run,
            timings=timings,
            status=ExportStatus.SUCCEEDED,
            rows=rows,
            bytes=size,
            path=path,
            error=None,
            next_attempt_at=None,
        )

    async def _failed(self, run: ExportRun, error: str) -> ExportRun:
        delay = min(RETRY_FIRST * 2 ** max(run.attempts - 1, 0), RETRY_MAX)
        return await self._finish(
            run,
            status=ExportStatus.FAILED,
            error=error[:1024],
            next_attempt_at=self._clock() + delay,
        )

    async def _finish(
        self,
        run: ExportRun,
        *,
        status: ExportStatus,
        timings: dict[str, float] | None = None,
        **values: object,
    ) -> ExportRun:
        now = self._clock()
        attempt = {
            "attempt": run.attempts,
            "status": status.value,
            "at": wire_date(now),
            "error": values.get("error"),
            **(timings or {}),  # where the time went: the query and the upload
        }
        history = [*(run.history or [])[-19:], attempt]
        async with transaction(self._sessions) as session:
            await session.execute(
                update(ExportRun)
                .where(ExportRun.id == run.id, ExportRun.lease_owner == self._owner)
                .values(
                    status=status.value,
                    lease_owner=None,
                    lease_until=None,
                    finished_at=now,
                    history=history,
                    **values,
                )
            )
            refreshed = await session.get(ExportRun, run.id)
        assert refreshed is not None
        return refreshed


def _may_start(run: ExportRun, now: datetime) -> bool:
    if run.status == ExportStatus.SUCCEEDED.value:
        return False
    if run.status == ExportStatus.RUNNING.value:
        return run.lease_until is not None and run.lease_until < now
    return run.next_attempt_at is None or run.next_attempt_at <= now


class FileTail:
    """The bytes of a file another task is writing, as they arrive (like `tail -f`), until the
    writer says it has finished; if it gives up instead, iterating raises, so the upload
    publishes nothing (clarion.storage.Storage.write)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._finished = threading.Event()
        self._abandoned = False

    def finish(self) -> None:
        self._finished.set()

    def abandon(self) -> None:
        self._abandoned = True
        self._finished.set()

    def __iter__(self) -> Iterator[bytes]:
        with self._path.open("rb") as file:
            while True:
                chunk = file.read(_UPLOAD_CHUNK)
                if chunk:
                    yield chunk
                    continue
                if self._abandoned:
                    raise RuntimeError("the export file could not be written")
                if self._finished.is_set():
                    # Finished after this read came back empty: what is left is the end.
                    while chunk := file.read(_UPLOAD_CHUNK):
                        yield chunk
                    if self._abandoned:  # given up in between: publish nothing
                        raise RuntimeError("the export file could not be written")
                    return
                self._finished.wait(0.05)


async def process_requests(
    sessions: async_sessionmaker[AsyncSession], *, var_dir: Path, clock: Clock = SYSTEM_CLOCK
) -> int:
    """Produce the files of waiting requests (a worker's loop); returns how many were done."""
    now = clock()
    async with sessions() as session:
        waiting = list(
            await session.scalars(
                select(ExportRequest.id)
                .where(
                    (ExportRequest.status == RequestStatus.CREATED.value)
                    | (
                        (ExportRequest.status == RequestStatus.PENDING.value)
                        & (ExportRequest.started_at < now - STALE_PENDING)
                    )
                )
                .order_by(ExportRequest.created_at)
                .limit(10)
            )
        )
    done = 0
    for request_id in waiting:
        claimed_at = clock()
        async with transaction(sessions) as session:
            claimed = await session.execute(
                update(ExportRequest)
                .where(
                    ExportRequest.id == request_id,
                    ExportRequest.status.in_(
                        [RequestStatus.CREATED.value, RequestStatus.PENDING.value]
                    ),
                    (ExportRequest.started_at.is_(None))
                    | (ExportRequest.started_at < now - STALE_PENDING),
                )
                .values(status=RequestStatus.PENDING.value, started_at=claimed_at)
            )
            if rowcount(claimed) != 1:
                continue
        await _produce_request(sessions, request_id, claimed_at, var_dir, clock)
        done += 1
    return done


async def _produce_request(
    sessions: async_sessionmaker[AsyncSession],
    request_id: str,
    claimed_at: datetime,
    var_dir: Path,
    clock: Clock,
) -> None:
    folder = var_dir / "export-requests"
    folder.mkdir(parents=True, exist_ok=True)
    async with sessions() as session:
        request = await session.get(ExportRequest, request_id)
        assert request is not None
        # A file of this claim's own: a worker slower than STALE_PENDING, taken over, must
        # neither overwrite nor (failing) remove the file of the claim that took it over.
        name = f"{request.kind}-{request.target}-{request.id}-{claimed_at:%Y%m%dT%H%M%S%f}.csv"
        query = request_query(
            RequestKind(request.kind),
            app_id=request.app_id,
            target=request.target,
            start=request.date_from,
            end=request.date_to,
            events=request.events,
            ids=request.ids,
        )
        try:
            await write_export(session, query, folder / name, compress=False)
            values: dict[str, object] = {"status": RequestStatus.SUCCESS.value, "file_name": name}
        except Exception as exc:
            log.exception("export request %s failed", request_id)
            (folder / name).unlink(missing_ok=True)
            values = {"status": RequestStatus.ERROR.value, "error": f"{type(exc).__name__}"}
    async with transaction(sessions) as session:
        # Only while the claim is still this one: a worker slower than STALE_PENDING has been
        # taken over, and the request's outcome is the newer claim's.
        finished = await session.execute(
            update(ExportRequest)
            .where(ExportRequest.id == request_id, ExportRequest.started_at == claimed_at)
            .values(completed_at=clock(), **values)
        )
    if rowcount(finished) != 1:
        log.warning("export request %s was taken over while being produced", request_id)
        (folder / name).unlink(missing_ok=True)  # the newer claim's file is the request's
