"""The job engine: pgqueuer, on PostgreSQL when scaled out, in memory when embedded.

Jobs carry delivery batch ids, never single notifications: a full batch (up to batch_size
recipients) rides alone, while small ones enqueued together (a burst of transactional sends to
one user each) share a job, so a worker pays its per-job costs once for all of them.
The batch rows are the durable outbox: a job is only a wake-up call. Whoever writes batches
(the send intake, the campaign fan-out, delivery retries) commits them in its own transaction and
enqueues their ids after the commit, so no job ever points at a row that was rolled back; a job
lost with an in-memory queue (or between commit and enqueue) is found again by the outbox sweep in
clarion.delivery.tasks. See docs/decisions/0003-job-engine.md and 0005-unit-of-work.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

import psycopg
from pgqueuer import Job, PgQueuer, PsycopgDriver
from pgqueuer.queries import Queries
from psycopg.rows import dict_row

from clarion.batching import TurnBatcher
from clarion.config import QueueBackend

log = logging.getLogger(__name__)


class Lane(Enum):
    """Which consumer of a worker takes a job: each lane has its own pgqueuer entrypoint and its
    own `worker_concurrency` slots in every worker, so a transactional send never waits behind
    the campaign batches enqueued before it (391 s p50 with one lane, at 1,000,000
    installations), and a campaign is never starved by transactional sends (a priority instead
    of slots left 980 of its 1,000 jobs unstarted after 9 minutes). Decision 0003."""

    # Transactional sends, automations, retries, take-overs and the sweep's. The entrypoint's
    # name predates the lanes: every version of Clarion consumes it (a rolling deploy).
    PROMPT = "delivery.send_batch"
    BULK = "delivery.send_bulk"  # a campaign's batches, as the fan-out writes them


@dataclass(frozen=True, slots=True)
class BatchJob:
    batch_id: int
    delay: timedelta | None = None
    # How many recipients the batch holds, when known: small batches share a job.
    recipients: int | None = None
    # Which job of the batch this is, for the dedupe key: "" the batch's first (or the
    # sweep's for a batch with no job), a worker id the one taking over that dead worker's
    # lease (the dead worker's job keeps its key until pgqueuer's heartbeat timeout, 8 s, and
    # would otherwise make the take-over a no-op that long), None no key at all (a batch handed
    # back by a stopping worker, whose own job is still running: rare, and an extra job
    # claims nothing). Jobs with a worker id or None are dequeued before new batches.
    after: str | None = ""
    lane: Lane = Lane.PROMPT

    def dedupe_key(self) -> str | None:
        if self.after is None:
            return None
        return f"batch:{self.batch_id}:{self.after}" if self.after else f"batch:{self.batch_id}"


def libpq_url(database_url: str) -> str:
    """psycopg's connection string for an SQLAlchemy URL."""
    return database_url.replace("postgresql+psycopg_async://", "postgresql://").replace(
        "postgresql+psycopg://", "postgresql://"
    )


BatchHandler = Callable[[list[int], Lane], Awaitable[None]]  # a job's batches, its lane


def pack_jobs(jobs: Iterable[BatchJob], *, budget: int) -> list[tuple[list[int], timedelta | None]]:
    """Group due batches into jobs of at most `budget` recipients; delayed, unsized or keyed
    ones (retries, the sweep, take-overs) go alone. Returns (batch ids, delay) per job."""
    packed: list[tuple[list[int], timedelta | None]] = []
    open_ids: list[int] = []
    open_size = 0
    for job in jobs:
        size = job.recipients
        if job.delay is not None or size is None or size >= budget or job.after != "":
            packed.append(([job.batch_id], job.delay))
            continue
        if open_size + size > budget:
            packed.append((open_ids, None))
            open_ids, open_size = [], 0
        open_ids.append(job.batch_id)
        open_size += size
    if open_ids:
        packed.append((open_ids, None))
    return packed


class _ListenerApart(PsycopgDriver):
    """pgqueuer's psycopg driver, its queries on a second connection.

    The driver waits for NOTIFYs holding its connection's lock (psycopg's notifies(), up to
    1 s at a time), so every query sharing that connection (dequeues, job status, heartbeats,
    enqueues) would wait for a NOTIFY or the timeout: a campaign's fan-out, which enqueues each
    page before writing the next, would write 10 batches a second, and a worker draining a
    backlog would wait between dequeues. With queries apart, a 1M-install fan-out runs at
    ~15,400/s (9,630/s sharing) and delivery of 200k at 21-22.6k/s (18.6k/s sharing); see
    docs/decisions/0003-job-engine.md. pgqueuer's asyncpg pool driver does the same, a listener
    connection of its own.
    """

    def __init__(
        self, listening: psycopg.AsyncConnection[Any], querying: psycopg.AsyncConnection[Any]
    ) -> None:
        super().__init__(listening)  # LISTEN and notifies() use it
        self._querying = querying

    async def fetch(self, query: str, *args: object) -> list[dict[str, object]]:
        cursor = psycopg.AsyncRawCursor(self._querying, row_factory=dict_row)
        await cursor.execute(query, args or None)
        return await cursor.fetchall()

    async def execute(self, query: str, *args: object) -> str:
        cursor = psycopg.AsyncRawCursor(self._querying)
        await cursor.execute(query, args or None)
        return cursor.statusmessage or ""


class JobQueue:
    """Enqueues batch jobs and runs workers over the configured backend."""

    def __init__(
        self,
        backend: QueueBackend,
        database_url: str,
        *,
        heartbeat_seconds: float = 30.0,
        job_recipients: int = 1000,
    ) -> None:
        self.backend = backend
        self._job_recipients = job_recipients
        self._heartbeat = timedelta(seconds=heartbeat_seconds)
        self._database_url = database_url
        self._lanes: dict[Lane, PgQueuer] = {}
        self._connections: list[psycopg.AsyncConnection[Any]] = []
        self._enqueue_lock = asyncio.Lock()
        # Jobs handed to enqueue() in the same turn of the event loop are packed together.
        self._batcher = TurnBatcher(self._enqueue_now)
        self._worker_concurrency = 8
        # In memory, the batches that a queued or running job names (see holding()).
        self._held_in_memory: Counter[int] = Counter()
        self._consuming = True

    async def start(self, *, consume: bool = True) -> None:
        """`consume`: this process runs workers. One that only enqueues (an API process on
        PostgreSQL) holds one connection for both lanes rather than four: it never listens,
        and its enqueues are short."""
        self._consuming = consume
        shared = None
        for lane in Lane:
            if self.backend is QueueBackend.MEMORY:
                self._lanes[lane] = PgQueuer.in_memory()
            elif consume:
                listening = await self._connect()
                querying = await self._connect()
                self._lanes[lane] = PgQueuer(_ListenerApart(listening, querying))
            else:
                shared = shared or await self._connect()
                self._lanes[lane] = PgQueuer(_ListenerApart(shared, shared))

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        # pgqueuer needs autocommit connections; LISTEN/NOTIFY wakes idle workers at once.
        # Kept at once, so that aclose() closes it even if start() fails after it.
        conn = await psycopg.AsyncConnection.connect(libpq_url(self._database_url), autocommit=True)
        self._connections.append(conn)
        return conn

    def lane(self, lane: Lane) -> PgQueuer:
        if lane not in self._lanes:
            raise RuntimeError("JobQueue.start() was not called")
        return self._lanes[lane]

    async def enqueue(self, jobs: list[BatchJob]) -> None:
        """Returns once the jobs are in the queue (for PostgreSQL: committed)."""
        if jobs:
            await self._batcher.submit(*jobs)

    async def _enqueue_now(self, jobs: list[BatchJob]) -> None:
        for lane in Lane:
            if in_lane := [job for job in jobs if job.lane is lane]:
                await self._enqueue_lane(lane, in_lane)

    async def _enqueue_lane(self, lane: Lane, jobs: list[BatchJob]) -> None:
        packed = pack_jobs(jobs, budget=self._job_recipients)
        # A dedupe key per job (its first batch's) makes a second enqueue of a queued or running
        # job a no-op, so the sweep may re-enqueue freely; the batch claim guards the rest.
        keys = {job.batch_id: job.dedupe_key() for job in jobs}
        # Batches taken over or handed back are dequeued before new ones: a half-sent batch
        # is finished before another one is begun.
        resumed = {job.batch_id for job in jobs if job.after != ""}
        in_memory = self.backend is QueueBackend.MEMORY
        async with self._enqueue_lock:
            if in_memory:
                # Counted before the jobs can run (a job that ran and finished first would
                # leave its count behind), and taken back for the jobs skipped as duplicates.
                for ids, _ in packed:
                    self._held_in_memory.update(ids)
            job_ids = await self.lane(lane).qm.queries.enqueue(
                [lane.value] * len(packed),
                [",".join(map(str, ids)).encode() for ids, _ in packed],
                [1 if ids[0] in resumed else 0 for ids, _ in packed],
                execute_after=[delay for _, delay in packed],
                dedupe_key=[keys[ids[0]] for ids, _ in packed],
                on_conflict="skip",
            )
            if in_memory:
                for (ids, _), job_id in zip(packed, job_ids, strict=True):
                    if job_id is None:
                        self._let_go_in_memory(ids)

    def register_worker(self, handler: BatchHandler, *, concurrency: int) -> None:
        if not self._consuming:
            raise RuntimeError("this JobQueue was started to enqueue only (consume=False)")
        for lane in Lane:
            self._register_lane(lane, handler, concurrency)
        self._worker_concurrency = concurrency

    def _register_lane(self, lane: Lane, handler: BatchHandler, concurrency: int) -> None:
        # pgqueuer holds at most `concurrency` jobs (run_worker), all of them delivering; these
        # slots only matter for a concurrency of 1 (pgqueuer then holds 2).
        slots = asyncio.Semaphore(concurrency)

        async def send_batch(job: Job) -> None:
            if job.payload is None:
                return
            batch_ids = [int(batch_id) for batch_id in job.payload.split(b",")]
            try:
                async with slots:
                    await handler(batch_ids, lane)
            finally:
                if self.backend is QueueBackend.MEMORY:
                    self._let_go_in_memory(batch_ids)

        self.lane(lane).entrypoint(lane.value, concurrency_limit=0)(send_batch)

    def _let_go_in_memory(self, batch_ids: Iterable[int]) -> None:
        held = self._held_in_memory
        for batch_id in batch_ids:
            held[batch_id] -= 1
            if held[batch_id] <= 0:
                del held[batch_id]

    async def holding(self, batch_ids: Sequence[int]) -> set[int]:
        """Those of `batch_ids` that a queued or running job names: their wake-up call is not
        lost, only waiting its turn, and the outbox sweep leaves them be. Without this, a
        backlog made the sweep enqueue every batch waiting longer than its interval a second
        time (a batch packed into another's job has no dedupe key of its own): 97,000 stale
        jobs in the 1,000,000-install run with 2 workers, drained at ~125/s."""
        if not batch_ids:
            return set()
        if self.backend is QueueBackend.MEMORY:
            return {batch_id for batch_id in batch_ids if batch_id in self._held_in_memory}
        queries = self.lane(Lane.PROMPT).qm.queries
        # One scan of the queue table: a few thousand rows in normal running, ~100k at worst.
        rows = await queries.driver.fetch(
            f"""SELECT DISTINCT named.id
                FROM {queries.qbe.settings.qualified.queue_table},
                     unnest(string_to_array(convert_from(payload, 'UTF8'), ',')::bigint[])
                       AS named(id)
                WHERE entrypoint = ANY($1::text[]) AND status IN ('queued', 'picked')
                  AND named.id = ANY($2::bigint[])""",
            [lane.value for lane in Lane],
            list(batch_ids),
        )
        return {int(str(row["id"])) for row in rows}

    async def run_worker(self) -> None:
        """Process jobs until stop() is called (or the task is cancelled)."""
        concurrency = self._worker_concurrency
        # pgqueuer wants max_concurrent_tasks of at least twice the batch size. A job a worker
        # holds without running it waits with its batches unclaimed, and if the worker is
        # killed, they wait for the heartbeat timeout (8 s) and a dequeue after it, which a
        # worker makes only when it has room (decision 0032). So a worker holds only the jobs
        # it runs, taking half as many at once.
        batch_size = max(1, concurrency // 2)
        async with asyncio.TaskGroup() as lanes:
            for lane in Lane:
                lanes.create_task(
                    self.lane(lane).run(
                        batch_size=batch_size,
                        max_concurrent_tasks=max(concurrency, 2 * batch_size),
                        # A worker killed mid-batch stops sending heartbeats; its job is picked
                        # again after this long (the batch's lease guards against double claims).
                        heartbeat_timeout=self._heartbeat,
                        dequeue_timeout=timedelta(seconds=5),
                    ),
                    name=f"worker {lane.name.lower()}",
                )

    def stop(self) -> None:
        for pgq in self._lanes.values():
            pgq.shutdown.set()

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
        queries = Queries.from_psycopg_connection(conn)
        if not await queries.has_table("pgqueuer"):
            await queries.install()
        else:
            await queries.upgrade()
