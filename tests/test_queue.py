"""Packing batches into jobs: small batches share a job, full, delayed or unsized ones do not.
On PostgreSQL, enqueues do not wait for a worker of the same process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from clarion.config import QueueBackend
from clarion.queue import BatchJob, JobQueue, Lane, install_pg_schema, libpq_url, pack_jobs
from tests.conftest import empty_database
from tests.support.waiting import eventually


def test_small_batches_share_jobs_up_to_the_recipient_budget() -> None:
    jobs = [BatchJob(i, recipients=3) for i in range(1, 8)]

    assert pack_jobs(jobs, budget=10) == [([1, 2, 3], None), ([4, 5, 6], None), ([7], None)]


def test_full_delayed_and_unsized_batches_ride_alone() -> None:
    later = timedelta(seconds=30)
    jobs = [
        BatchJob(1, recipients=1),
        BatchJob(2, recipients=10),  # full
        BatchJob(3, recipients=1, delay=later),  # a retry
        BatchJob(4),  # re-enqueued by the sweep: size unknown
        BatchJob(5, recipients=1),
    ]

    assert pack_jobs(jobs, budget=10) == [
        ([2], None),
        ([3], later),
        ([4], None),
        ([1, 5], None),
    ]


@asynccontextmanager
async def _pg_worker(
    folder: Path,
    *,
    concurrency: int,
    release: asyncio.Event | None = None,
    hold: set[int] | None = None,
) -> AsyncIterator[tuple[JobQueue, list[int], str]]:
    """A PostgreSQL job queue with a worker running in this process, the batch ids it has
    handled so far (`release`: each job, or each naming a batch of `hold`, then waits for it),
    and the database's URL."""
    with empty_database("postgres", folder) as url:
        await install_pg_schema(url)
        queue = JobQueue(QueueBackend.POSTGRES, url)
        await queue.start()
        handled: list[int] = []

        async def handle(batch_ids: list[int], lane: Lane) -> None:
            handled.extend(batch_ids)
            if release is not None and (hold is None or hold.intersection(batch_ids)):
                await release.wait()

        queue.register_worker(handle, concurrency=concurrency)
        worker = asyncio.create_task(queue.run_worker())
        try:
            await _idle_listening(url)
            yield queue, handled, url
        finally:
            queue.stop()
            await asyncio.wait_for(worker, 10)
            await queue.aclose()


async def _idle_listening(url: str, *, jobs_left: int = 0) -> None:
    """Until the worker waits for a NOTIFY: it has LISTENed, `jobs_left` jobs are in the queue,
    and none of its queries is running (the queue's database is this test's alone)."""
    async with await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True) as watcher:

        async def idle() -> bool:
            cursor = await watcher.execute(
                "SELECT bool_or(query LIKE 'LISTEN%'),"
                " bool_or(state = 'active' AND pid <> pg_backend_pid()),"
                " (SELECT count(*) FROM pgqueuer)"
                " FROM pg_stat_activity WHERE datname = current_database()"
            )
            listened, busy, jobs = await cursor.fetchone() or (False, True, 1)
            return bool(listened) and not busy and jobs == jobs_left

        await eventually(idle, what="the worker idle, listening")


async def _handled(handled: list[int], count: int) -> None:
    async def all_handled() -> bool:
        return len(handled) >= count

    await eventually(all_handled, what=f"{count} jobs handled")


# pgqueuer's worker waits for NOTIFYs holding its connection, up to 1 s at a time. Enqueues
# that shared it took up to 1 s each (a campaign's fan-out wrote a page a second), and so did its
# next dequeue once a job was done, when no enqueue woke it.


@pytest.mark.postgres
async def test_enqueues_do_not_wait_for_the_worker_listening_in_the_same_process(
    tmp_path: Path,
) -> None:
    async with _pg_worker(tmp_path, concurrency=4) as (queue, handled, url):
        enqueuing = 0.0
        for batch_id in range(1, 6):
            await _handled(handled, batch_id - 1)
            await _idle_listening(url)
            started = time.monotonic()
            await queue.enqueue([BatchJob(batch_id, recipients=1000)])
            enqueuing += time.monotonic() - started
        await _handled(handled, 5)

    assert sorted(handled) == list(range(1, 6))
    assert enqueuing < 1.0, f"5 enqueues took {enqueuing:.3f} s"


@pytest.mark.postgres
async def test_a_worker_takes_queued_jobs_one_after_another_without_waiting(
    tmp_path: Path,
) -> None:
    # One job at a time, two picked at most.
    async with _pg_worker(tmp_path, concurrency=1) as (queue, handled, _):
        await queue.enqueue([BatchJob(batch_id) for batch_id in range(1, 9)])
        started = time.monotonic()
        await _handled(handled, 8)
        draining = time.monotonic() - started

    assert sorted(handled) == list(range(1, 9))
    assert draining < 1.0, f"8 jobs took {draining:.3f} s"


async def _jobs(url: str) -> list[tuple[str, int]]:
    """(status, priority) of every job in the queue, by id."""
    async with await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
        cursor = await conn.execute("SELECT status::text, priority FROM pgqueuer ORDER BY id")
        return [(str(status), int(priority)) for status, priority in await cursor.fetchall()]


@pytest.mark.postgres
async def test_a_worker_holds_only_the_jobs_it_runs(tmp_path: Path) -> None:
    """A job held and not run waits with its batches unclaimed; if the worker is killed, they
    wait for pgqueuer's heartbeat timeout and a dequeue after it (decision 0032)."""
    release = asyncio.Event()
    async with _pg_worker(tmp_path, concurrency=4, release=release) as (queue, handled, url):
        await queue.enqueue([BatchJob(batch_id) for batch_id in range(1, 11)])
        await _handled(handled, 4)  # 4 running, each waiting for the release
        await _idle_listening(url, jobs_left=10)
        statuses = [status for status, _ in await _jobs(url)]
        release.set()
        await _handled(handled, 10)

    assert (statuses.count("picked"), statuses.count("queued")) == (4, 6)


@pytest.mark.postgres
async def test_batches_taken_over_or_handed_back_are_dequeued_first(tmp_path: Path) -> None:
    with empty_database("postgres", tmp_path) as url:
        await install_pg_schema(url)
        queue = JobQueue(QueueBackend.POSTGRES, url)
        await queue.start()
        try:
            later = timedelta(hours=1)
            await queue.enqueue(
                [
                    BatchJob(1, delay=later),  # a new batch
                    BatchJob(2, delay=later, after="dead-worker"),  # a take-over
                    BatchJob(3, delay=later, after=None),  # handed back by a stopping worker
                ]
            )
            jobs = await _jobs(url)
        finally:
            await queue.aclose()

    assert [priority for _, priority in jobs] == [0, 1, 1]


@pytest.mark.postgres
@pytest.mark.parametrize(("busy", "other"), [(Lane.BULK, Lane.PROMPT), (Lane.PROMPT, Lane.BULK)])
async def test_a_lane_whose_jobs_wait_does_not_hold_the_other_back(
    busy: Lane, other: Lane, tmp_path: Path
) -> None:
    """A transactional send is not behind a campaign's batches (with one lane it waited 391 s
    at 1,000,000 installations), and a campaign is not starved by transactional sends."""
    release = asyncio.Event()
    async with _pg_worker(tmp_path, concurrency=1, release=release, hold={1, 2}) as (
        queue,
        handled,
        _,
    ):
        await queue.enqueue([BatchJob(i, recipients=1000, lane=busy) for i in (1, 2)])
        await _handled(handled, 1)  # 1 is being sent; 2 waits for its lane's one slot
        await queue.enqueue([BatchJob(99, recipients=1000, lane=other)])
        await _handled(handled, 2)
        seen = list(handled)
        release.set()
        await _handled(handled, 3)

    assert seen == [1, 99]


@pytest.mark.parametrize(
    "backend",
    [QueueBackend.MEMORY, pytest.param(QueueBackend.POSTGRES, marks=pytest.mark.postgres)],
)
async def test_the_queue_tells_which_batches_a_waiting_job_names(
    backend: QueueBackend, tmp_path: Path
) -> None:
    """What the outbox sweep asks before enqueuing a batch again: batches packed into another
    batch's job (whose dedupe key is that batch's) included, and a job the queue skipped as a
    duplicate not counted."""
    with contextlib.ExitStack() as stack:
        url = ""
        if backend is QueueBackend.POSTGRES:
            url = stack.enter_context(empty_database("postgres", tmp_path))
            await install_pg_schema(url)
        queue = JobQueue(backend, url)
        await queue.start()
        try:
            await queue.enqueue(
                [BatchJob(1, recipients=1), BatchJob(2, recipients=1), BatchJob(3, recipients=1000)]
            )
            # Batch 3 again, as the sweep may: its job is queued, so the queue skips this one,
            # and the batch is named until that one job has run (not forever).
            await queue.enqueue([BatchJob(3, recipients=1000)])
            named = await queue.holding([1, 2, 3, 4])
            handled: list[int] = []

            async def handle(batch_ids: list[int], lane: Lane) -> None:
                handled.extend(batch_ids)

            queue.register_worker(handle, concurrency=2)
            worker = asyncio.create_task(queue.run_worker())
            await _handled(handled, 3)
            left = await queue.holding([1, 2, 3])
            queue.stop()
            await asyncio.wait_for(worker, 10)
        finally:
            await queue.aclose()

    assert named == {1, 2, 3}
    assert left == set()


@pytest.mark.postgres
async def test_a_process_that_only_enqueues_holds_one_queue_connection(tmp_path: Path) -> None:
    """An API process on PostgreSQL never listens nor dequeues: one connection for both lanes
    (a worker holds four), and its jobs reach the queue all the same."""
    with empty_database("postgres", tmp_path) as url:
        await install_pg_schema(url)

        async def connections() -> int:
            async with await psycopg.AsyncConnection.connect(libpq_url(url)) as conn:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                row = await cursor.fetchone()
                assert row is not None
                return int(row[0])

        held: list[int] = []
        for consume in (False, True):
            queue = JobQueue(QueueBackend.POSTGRES, url)
            await queue.start(consume=consume)
            try:
                held.append(await connections())
                if not consume:
                    await queue.enqueue([BatchJob(7), BatchJob(8, lane=Lane.BULK)])
                    waiting = await queue.holding([7, 8])
                    with pytest.raises(RuntimeError, match="enqueue only"):
                        queue.register_worker(_nothing, concurrency=1)
            finally:
                await queue.aclose()

    assert held == [1, 4]
    assert waiting == {7, 8}


async def _nothing(batch_ids: list[int], lane: Lane) -> None:
    return None
