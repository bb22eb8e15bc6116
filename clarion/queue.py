"""The job engine: pgqueuer, on PostgreSQL when scaled out, in memory when embedded.

Jobs carry one delivery batch id each (500-1,000 recipients), never single notifications.
The batch rows are the durable outbox: a job is only a wake-up call, so a job lost with an
in-memory queue (or between commit and enqueue) is found again by the outbox sweep in
clarion.delivery.service. Services never enqueue directly: they defer batch ids on the session,
and the unit-of-work wrapper enqueues them once the transaction has committed, so no job ever
points at a row that was rolled back. See docs/decisions/0003-job-engine.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from pgqueuer import Job, PgQueuer, PsycopgDriver
from pgqueuer.queries import Queries
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.config import QueueBackend

log = logging.getLogger(__name__)

SEND_BATCH = "delivery.send_batch"
_DEFERRED = "clarion.deferred_batches"


@dataclass(frozen=True, slots=True)
class BatchJob:
    batch_id: int
    delay: timedelta | None = None


def defer_batches(session: AsyncSession, jobs: Iterable[BatchJob]) -> None:
    """Enqueue these batches once `session` commits (dropped if it rolls back)."""
    session.info.setdefault(_DEFERRED, []).extend(jobs)


def take_deferred(session: AsyncSession) -> list[BatchJob]:
    jobs: list[BatchJob] = session.info.pop(_DEFERRED, [])
    return jobs


def libpq_url(database_url: str) -> str:
    """psycopg's connection string for an SQLAlchemy URL."""
    return database_url.replace("postgresql+psycopg_async://", "postgresql://").replace(
        "postgresql+psycopg://", "postgresql://"
    )


BatchHandler = Callable[[int], Awaitable[None]]


class JobQueue:
    """Enqueues batch jobs and runs workers over the configured backend."""

    def __init__(
        self, backend: QueueBackend, database_url: str, *, heartbeat_seconds: float = 30.0
    ) -> None:
        self.backend = backend
        self._heartbeat = timedelta(seconds=heartbeat_seconds)
        self._database_url = database_url
        self._pgq: PgQueuer | None = None
        self._connections: list[psycopg.AsyncConnection[Any]] = []
        self._enqueue_lock = asyncio.Lock()
        self._worker_concurrency = 8

    async def start(self) -> None:
        if self.backend is QueueBackend.MEMORY:
            self._pgq = PgQueuer.in_memory()
            return
        # pgqueuer needs an autocommit connection; LISTEN/NOTIFY wakes idle workers at once.
        conn = await psycopg.AsyncConnection.connect(libpq_url(self._database_url), autocommit=True)
        self._connections.append(conn)
        self._pgq = PgQueuer.from_psycopg_connection(conn)

    @property
    def pgq(self) -> PgQueuer:
        if self._pgq is None:
            raise RuntimeError("JobQueue.start() was not called")
        return self._pgq

    async def enqueue(self, jobs: list[BatchJob]) -> None:
        if not jobs:
            return
        # A dedupe key per batch makes a second enqueue of a queued or running batch a no-op,
        # so the sweep may re-enqueue freely.
        async with self._enqueue_lock:
            await self.pgq.qm.queries.enqueue(
                [SEND_BATCH] * len(jobs),
                [str(job.batch_id).encode() for job in jobs],
                [0] * len(jobs),
                execute_after=[job.delay for job in jobs],
                dedupe_key=[f"batch:{job.batch_id}" for job in jobs],
                on_conflict="skip",
            )

    async def flush_deferred(self, session: AsyncSession) -> None:
        await self.enqueue(take_deferred(session))

    def register_worker(self, handler: BatchHandler, *, concurrency: int) -> None:
        async def send_batch(job: Job) -> None:
            if job.payload is None:
                return
            await handler(int(job.payload))

        self.pgq.entrypoint(SEND_BATCH, concurrency_limit=0)(send_batch)
        self._worker_concurrency = concurrency

    async def run_worker(self) -> None:
        """Process jobs until stop() is called (or the task is cancelled)."""
        concurrency = self._worker_concurrency
        await self.pgq.run(
            batch_size=concurrency,
            max_concurrent_tasks=2 * concurrency,
            # A worker killed mid-batch stops sending heartbeats; its job is picked again
            # after this long (the batch's own lease guards against double claims).
            heartbeat_timeout=self._heartbeat,
            dequeue_timeout=timedelta(seconds=5),
        )

    def stop(self) -> None:
        if self._pgq is not None:
            self._pgq.shutdown.set()

    async def aclose(self) -> None:
        self.stop()
        for conn in self._connections:
            await conn.close()
        self._connections.clear()


async def install_pg_schema(database_url: str) -> None:
    """Create or upgrade pgqueuer's tables (part of `clarion migrate` on PostgreSQL)."""
    async with await psycopg.AsyncConnection.connect(
        libpq_url(database_url), autocommit=True
    ) as conn:
        queries = Queries(PsycopgDriver(conn))
        if not await queries.has_table("pgqueuer"):
            await queries.install()
        else:
            await queries.upgrade()
