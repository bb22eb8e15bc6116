"""Leases, progress within a batch, and stopping a worker (decision 0032).

Each test stands two workers up as two Deliverers on the same database and the real APNs
simulator, with a clock of their own a day ahead: the session's runtime (real clock) neither
claims nor sweeps their batches. A worker that dies is one that stops renewing and recording
(`abort`); its lease expires when the test moves the clock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select

from clarion.config import QueueBackend, Settings
from clarion.db import transaction, utcnow
from clarion.delivery.journal import AnswerJournal, journal_key
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send
from clarion.delivery.pool import ProviderPool, provider_client
from clarion.delivery.tasks import Deliverer
from clarion.demo import seed_installations
from clarion.events.models import PushEvent
from clarion.queue import BatchJob, JobQueue, libpq_url
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from tests.conftest import new_app
from tests.test_recovery import api_only, count_sent, pg_settings, send_to_all, start_worker

__all__ = ["api_only", "pg_settings"]  # fixtures of the real-process test, shared
from tests.support.waiting import eventually


class Clock:
    def __init__(self) -> None:
        self.now = utcnow() + timedelta(days=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
async def pool(runtime: Runtime) -> AsyncIterator[ProviderPool]:
    client = provider_client(runtime.settings)
    pool = ProviderPool(client, runtime.settings, runtime.box)
    yield pool
    await pool.aclose()
    await client.aclose()


@pytest.fixture
async def workers(
    runtime: Runtime, pool: ProviderPool, held_queue: JobQueue
) -> AsyncIterator[Callable[..., Deliverer]]:
    """Deliverers standing for worker processes (settings overridden per worker)."""
    made: list[Deliverer] = []

    def make(clock: Clock, **overrides: Any) -> Deliverer:
        settings = runtime.settings.model_copy(update=overrides)
        deliverer = Deliverer(runtime.sessions, pool, held_queue, settings, clock=clock)
        made.append(deliverer)
        return deliverer

    yield make
    for deliverer in made:
        await deliverer.abort()


async def write_batch(runtime: Runtime, sim_control: httpx.Client, clock: Clock, n: int) -> int:
    """A send to n new iOS installations, one pending batch naming them by custom id."""
    app = await new_app(runtime, sim_control, "ios")
    prefix = f"lease-{uuid.uuid4().hex[:8]}"
    await seed_installations(runtime.sessions, app_id=app.app_id, count=n, custom_id_prefix=prefix)
    async with transaction(runtime.sessions) as session:
        send = Send(
            token=str(uuid.uuid4()),
            app_id=app.app_id,
            kind="transactional",
            content={"message": {"title": "Lease", "body": "Once"}},
            created_at=clock(),
        )
        session.add(send)
        await session.flush()
        batch = DeliveryBatch(
            send_id=send.id,
            recipients={"custom_ids": [f"{prefix}-{i}" for i in range(n)]},
            not_before=clock(),
            last_enqueued_at=clock(),
            created_at=clock(),
        )
        session.add(batch)
        await session.flush()
        return batch.id


async def batch_of(runtime: Runtime, batch_id: int) -> DeliveryBatch:
    async with runtime.sessions() as session:
        batch = await session.get(DeliveryBatch, batch_id)
        assert batch is not None
        return batch


async def tokens_of(runtime: Runtime, batch_id: int) -> list[str]:
    async with runtime.sessions() as session:
        batch = await session.get(DeliveryBatch, batch_id)
        assert batch is not None
        send = await session.get(Send, batch.send_id)
        assert send is not None
        return [
            token
            for token in await session.scalars(
                select(Installation.push_token).where(Installation.app_id == send.app_id)
            )
            if token is not None
        ]


def received(sim_control: httpx.Client, tokens: list[str]) -> dict[str, int]:
    return {
        token: int(sim_control.get(f"/_sim/apns/tokens/{token}").json()["count"])
        for token in tokens
    }


async def sent_events(runtime: Runtime, batch_id: int) -> list[PushEvent]:
    async with runtime.sessions() as session:
        batch = await session.get(DeliveryBatch, batch_id)
        assert batch is not None
        send = await session.get(Send, batch.send_id)
        assert send is not None
        return list(
            await session.scalars(
                select(PushEvent).where(
                    PushEvent.send_token == send.token, PushEvent.kind == "push_sent"
                )
            )
        )


async def partly_sent(
    runtime: Runtime, worker: Deliverer, batch_id: int, recorded: int
) -> asyncio.Task[None]:
    """The worker delivering the batch, once it has recorded outcomes of `recorded` recipients."""
    delivering = asyncio.create_task(worker.deliver_batches([batch_id]))

    async def some_recorded() -> bool:
        return (await batch_of(runtime, batch_id)).sent >= recorded

    await eventually(some_recorded, what="some recorded")
    return delivering


def slow_provider(sim_control: httpx.Client, delay_ms: int) -> None:
    response = sim_control.put("/_sim/apns/faults", json={"rates": {}, "delay_ms": delay_ms})
    response.raise_for_status()


async def test_renewal_keeps_a_slow_providers_batch_from_a_second_worker(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
) -> None:
    clock = Clock()
    batch_id = await write_batch(runtime, sim_control, clock, 10)
    tokens = await tokens_of(runtime, batch_id)
    slow_provider(sim_control, 5000)  # answers after 5 s: 2 leases of the clock below
    first, second = workers(clock), workers(clock)

    delivering = asyncio.create_task(first.deliver_batches([batch_id]))

    async def claimed() -> bool:
        return (await batch_of(runtime, batch_id)).lease_owner == first.worker_id

    await eventually(claimed, what="claimed")  # and its requests wait 5 s for their answers
    clock.advance(2 * runtime.settings.delivery_lease_seconds)  # the provider is slow
    await first.renew_leases()
    assert (await batch_of(runtime, batch_id)).status == BatchStatus.SENDING.value
    await second.deliver_batches([batch_id])  # its claim finds the lease alive
    await delivering

    batch = await batch_of(runtime, batch_id)
    assert (batch.status, batch.sent, batch.resent) == (BatchStatus.DONE.value, 10, 0)
    assert set(received(sim_control, tokens).values()) == {1}  # nobody got it twice


async def test_a_dead_workers_batch_is_taken_over_and_only_its_unanswered_requests_resent(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
) -> None:
    clock = Clock()
    n, in_flight = 24, 4
    batch_id = await write_batch(runtime, sim_control, clock, n)
    tokens = await tokens_of(runtime, batch_id)
    slow_provider(sim_control, 100)
    # Outcomes recorded as they come (each result a flush), 4 requests on the wire at a time.
    dying = workers(
        clock, delivery_in_flight=in_flight, delivery_on_wire=in_flight, progress_flush_results=1
    )
    taking_over = workers(clock)

    delivering = await partly_sent(runtime, dying, batch_id, in_flight)
    await dying.abort()  # kill -9: no renewal, no recording, nothing handed back
    assert delivering.cancelled()
    recorded = (await batch_of(runtime, batch_id)).sent
    assert in_flight <= recorded < n
    # What the dying worker had on the wire without an answer (its journal): sent again.
    async with runtime.sessions() as session:
        token = await session.scalar(
            select(Send.token)
            .join(DeliveryBatch, DeliveryBatch.send_id == Send.id)
            .where(DeliveryBatch.id == batch_id)
        )
    assert token is not None
    journaled = AnswerJournal(runtime.settings.delivery_journal_folder).read(
        journal_key(batch_id, token)
    )
    assert journaled is not None
    unanswered = len(journaled.unanswered)
    assert unanswered <= in_flight
    slow_provider(sim_control, 0)

    assert await taking_over.sweep_leases() == 0  # its lease still runs
    clock.advance(runtime.settings.delivery_lease_seconds + 1)
    assert await taking_over.sweep_leases() == 1
    await taking_over.deliver_batches([batch_id])

    batch = await batch_of(runtime, batch_id)
    assert batch.status == BatchStatus.DONE.value
    assert (batch.targeted, batch.sent, batch.failed) == (n, n, 0)
    assert batch.resent == unanswered
    # The custom ids were written as the installations they named, with the first outcomes.
    assert set(batch.recipients) == {"installations", "tokens"}
    events = await sent_events(runtime, batch_id)
    assert sorted(e.push_token or "" for e in events) == sorted(tokens)  # one each
    assert sum(e.resent for e in events) == unanswered
    # Sent twice: at most what was on the wire unanswered when the first worker died (the
    # simulator may not have taken a request cancelled mid-way), and counted.
    counts = received(sim_control, tokens)
    assert min(counts.values()) == 1
    assert sum(counts.values()) - n <= unanswered


async def test_a_dead_workers_batch_is_taken_over_once_quiet_and_a_live_ones_is_not(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
) -> None:
    """On PostgreSQL a worker's lock goes with its session: a dead worker's batch is taken over
    once its lease has not been renewed for 1.5 renewals (3 s), not when the lease runs out
    (8 s); a live worker's, renewed no later, is kept: its lock is held. On SQLite (one
    process) the lease alone decides."""
    clock = Clock()
    dead_batch = await write_batch(runtime, sim_control, clock, 8)
    live_batch = await write_batch(runtime, sim_control, clock, 8)
    slow_provider(sim_control, 2000)  # both on the wire for 2 s
    dying, living, sweeper = workers(clock), workers(clock), workers(clock)
    delivering = [
        asyncio.create_task(dying.deliver_batches([dead_batch])),
        asyncio.create_task(living.deliver_batches([live_batch])),
    ]

    async def on_the_wire() -> bool:  # progress is written just before the first request
        batches = [await batch_of(runtime, i) for i in (dead_batch, live_batch)]
        return all(batch.progress is not None for batch in batches)

    await eventually(on_the_wire, what="both on the wire")
    await dying.abort()  # kill -9: its PostgreSQL session ends with the process
    quiet = 1.5 * runtime.settings.delivery_lease_renew_seconds
    assert quiet + 1 < runtime.settings.delivery_lease_seconds
    clock.advance(quiet - 0.5)
    assert await sweeper.sweep_leases() == 0  # renewed lately: maybe only late
    clock.advance(1)  # neither renewed for 1.5 renewals; only one of them is alive

    taken = await sweeper.sweep_leases()

    live = await batch_of(runtime, live_batch)
    assert (live.lease_owner, live.status) == (living.worker_id, BatchStatus.SENDING.value)
    if runtime.settings.is_sqlite:
        assert taken == 0  # its lease still runs
        clock.advance(runtime.settings.delivery_lease_seconds)
        await living.renew_leases()
        assert await sweeper.sweep_leases() == 1
    else:
        assert taken == 1
    slow_provider(sim_control, 0)
    await sweeper.deliver_batches([dead_batch])
    await delivering[1]
    dead, live = await batch_of(runtime, dead_batch), await batch_of(runtime, live_batch)
    assert (dead.status, dead.sent, dead.resent) == (BatchStatus.DONE.value, 8, 8)
    assert (live.status, live.sent, live.resent) == (BatchStatus.DONE.value, 8, 0)


@contextlib.asynccontextmanager
async def recordings_held_back(runtime: Runtime) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """PostgreSQL: no push event can be written until the block commits. A batch's first
    progress writes none and commits; every recording of outcomes waits."""
    if runtime.settings.is_sqlite:
        pytest.skip("the recording is held back by a PostgreSQL table lock")
    url = libpq_url(runtime.settings.resolved_database_url)
    async with await psycopg.AsyncConnection.connect(url) as blocker:
        await blocker.execute("LOCK TABLE push_events IN EXCLUSIVE MODE")
        yield blocker


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no journal"])
async def test_answers_a_killed_worker_had_not_recorded_are_not_sent_again(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
    tmp_path: Path,
    journal: bool,
) -> None:
    """A worker killed after its answers came in and before it recorded them: the worker that
    takes the batch over finds them in the journal (journal.py), records them and sends nothing
    again; without a journal every recipient gets the push twice, counted as re-sent."""
    clock = Clock()
    n = 12
    batch_id = await write_batch(runtime, sim_control, clock, n)
    tokens = await tokens_of(runtime, batch_id)
    options = {"delivery_journal": journal, "delivery_journal_dir": tmp_path}
    dying, taking_over = workers(clock, **options), workers(clock, **options)
    folder = runtime.settings.model_copy(update=options).delivery_journal_folder
    async with runtime.sessions() as session:
        batch = await session.get(DeliveryBatch, batch_id)
        assert batch is not None
        send = await session.get(Send, batch.send_id)
        assert send is not None
        key = journal_key(batch_id, send.token)

    async with recordings_held_back(runtime) as blocker:  # the worker dies with all unrecorded
        delivering = asyncio.create_task(dying.deliver_batches([batch_id]))

        async def all_answered() -> bool:
            if sum(received(sim_control, tokens).values()) < n:
                return False
            if not journal:
                return True
            assert folder is not None
            journaled = AnswerJournal(folder).read(key)
            return journaled is not None and len(journaled.answers) == n

        await eventually(all_answered, what="every push answered")
        # kill -9: its recording, waiting for the lock, is cancelled in the server before the
        # lock goes (psycopg cancels the query of a cancelled task).
        await dying.abort()
        await blocker.commit()
    assert delivering.cancelled()
    assert (await batch_of(runtime, batch_id)).sent == 0

    clock.advance(runtime.settings.delivery_lease_seconds + 1)
    assert await taking_over.sweep_leases() == 1
    await taking_over.deliver_batches([batch_id])

    batch = await batch_of(runtime, batch_id)
    assert (batch.status, batch.sent) == (BatchStatus.DONE.value, n)
    events = await sent_events(runtime, batch_id)
    assert sorted(e.push_token or "" for e in events) == sorted(tokens)
    if journal:
        assert received(sim_control, tokens) == dict.fromkeys(tokens, 1)
        assert (batch.resent, sum(e.resent for e in events)) == (0, 0)
        assert folder is not None
        assert list(folder.iterdir()) == []  # the batch is done: its journal is gone
    else:
        assert received(sim_control, tokens) == dict.fromkeys(tokens, 2)
        assert (batch.resent, sum(e.resent for e in events)) == (n, n)


async def test_with_a_journal_room_on_the_wire_comes_back_with_the_answers(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
) -> None:
    """Room for 4 requests, and the database not recording: the answers are in the journal,
    so a kill would not send them again, and the next requests go out without waiting for the
    commit (decision 0047); the recording follows once the database is back."""
    clock = Clock()
    n, in_flight = 12, 4
    batch_id = await write_batch(runtime, sim_control, clock, n)
    tokens = await tokens_of(runtime, batch_id)
    worker = workers(clock, delivery_in_flight=in_flight, delivery_on_wire=in_flight)

    async with recordings_held_back(runtime):
        delivering = asyncio.create_task(worker.deliver_batches([batch_id]))

        async def all_sent() -> bool:
            return sum(received(sim_control, tokens).values()) == n

        await eventually(all_sent, what="all sent while nothing is recorded")
        assert (await batch_of(runtime, batch_id)).sent == 0
    await delivering

    batch = await batch_of(runtime, batch_id)
    assert (batch.status, batch.sent, batch.resent) == (BatchStatus.DONE.value, n, 0)
    assert received(sim_control, tokens) == dict.fromkeys(tokens, 1)


async def test_only_a_batchs_first_progress_waits_for_the_disk(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
) -> None:
    """PostgreSQL: recordings commit without waiting for the WAL's fsync (a crash of PostgreSQL
    can only make them sent again), except the first, which says that the batch may have been
    sent: it is on disk before the first request goes out."""
    if runtime.settings.is_sqlite:
        pytest.skip("PostgreSQL's synchronous_commit")
    clock = Clock()
    batch_id = await write_batch(runtime, sim_control, clock, 6)
    worker = workers(clock, delivery_in_flight=2, delivery_on_wire=2, progress_flush_results=1)
    # Each of the worker's renewals and recordings begins with the renewal (_HOLD); what ran
    # just before it on its connection says whether the transaction waits for the disk.
    before_hold: list[str] = []
    last: dict[int, str] = {}

    def seen(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.startswith("UPDATE delivery_batches SET lease_until") and (
            isinstance(parameters, dict) and parameters.get("owner") == worker.worker_id
        ):
            before_hold.append(last.get(id(conn), ""))
        last[id(conn)] = statement

    sync_engine = runtime.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", seen)
    try:
        await worker.deliver_batches([batch_id])
    finally:
        event.remove(sync_engine, "before_cursor_execute", seen)

    assert (await batch_of(runtime, batch_id)).sent == 6
    no_wait = "SET LOCAL synchronous_commit = off"
    assert len(before_hold) >= 3, before_hold
    assert before_hold[0] != no_wait  # the first progress: durable before the first request
    assert before_hold[1:] == [no_wait] * (len(before_hold) - 1)


async def test_a_worker_that_lost_its_batch_records_nothing_for_it(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
) -> None:
    clock = Clock()
    batch_id = await write_batch(runtime, sim_control, clock, 8)
    slow_provider(sim_control, 5000)  # answers after 5 s
    stalled, other = workers(clock), workers(clock)

    delivering = asyncio.create_task(stalled.deliver_batches([batch_id]))

    async def on_the_wire() -> bool:  # its progress is written just before its requests go
        return (await batch_of(runtime, batch_id)).progress is not None

    await eventually(on_the_wire, what="on the wire")  # and its requests wait 5 s for their answers
    # The first worker stalls past its lease (no renewal); the second takes the batch over.
    clock.advance(runtime.settings.delivery_lease_seconds + 1)
    await other.deliver_batches([batch_id])
    finished = await batch_of(runtime, batch_id)
    assert (finished.status, finished.lease_owner) == (BatchStatus.DONE.value, None)
    await delivering  # its answers come: its finish is refused, nothing recorded

    batch = await batch_of(runtime, batch_id)
    assert (batch.sent, batch.resent, batch.finished_at) == (8, 8, finished.finished_at)
    assert len(await sent_events(runtime, batch_id)) == 8


async def test_a_stopped_worker_hands_back_its_batch_and_nothing_is_sent_twice(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
) -> None:
    clock = Clock()
    n, in_flight = 40, 4
    batch_id = await write_batch(runtime, sim_control, clock, n)
    tokens = await tokens_of(runtime, batch_id)
    slow_provider(sim_control, 100)
    stopping = workers(
        clock, delivery_in_flight=in_flight, delivery_on_wire=in_flight, progress_flush_results=1
    )
    next_one = workers(clock)

    delivering = await partly_sent(runtime, stopping, batch_id, in_flight)
    await stopping.stop()  # SIGTERM
    await delivering
    handed_back = await batch_of(runtime, batch_id)
    assert handed_back.status == BatchStatus.PENDING.value
    assert (handed_back.lease_owner, handed_back.lease_until) == (None, None)
    assert 0 < handed_back.sent < n
    assert handed_back.progress is not None
    slow_provider(sim_control, 0)

    await next_one.deliver_batches([batch_id])

    batch = await batch_of(runtime, batch_id)
    assert (batch.status, batch.targeted, batch.sent, batch.resent) == (
        BatchStatus.DONE.value,
        n,
        n,
        0,
    )
    assert set(received(sim_control, tokens).values()) == {1}
    events = await sent_events(runtime, batch_id)
    assert len(events) == n
    assert not any(e.resent for e in events)


async def test_a_429_retry_is_no_resend(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
) -> None:
    clock = Clock()
    batch_id = await write_batch(runtime, sim_control, clock, 4)
    tokens = await tokens_of(runtime, batch_id)
    for token in tokens[:2]:
        sim_control.post(f"/_sim/apns/tokens/{token}/fail", json={"status": 429, "count": 1})
    worker = workers(clock)

    await worker.deliver_batches([batch_id])
    send_id = (await batch_of(runtime, batch_id)).send_id
    async with runtime.sessions() as session:
        retry = await session.scalar(
            select(DeliveryBatch).where(
                DeliveryBatch.send_id == send_id, DeliveryBatch.id != batch_id
            )
        )
    assert retry is not None
    assert not retry.outcome_unknown  # refused, so not delivered: sending it again is no re-send
    clock.now = retry.not_before
    await worker.deliver_batches([retry.id])

    assert (
        (await batch_of(runtime, retry.id)).sent,
        (await batch_of(runtime, retry.id)).resent,
    ) == (2, 0)
    assert received(sim_control, tokens) == dict.fromkeys(tokens, 1)


@pytest.mark.postgres
async def test_a_take_over_is_not_blocked_by_the_dead_workers_job(
    settings: Settings, backend: str
) -> None:
    if backend != "postgres":
        pytest.skip("pgqueuer's dedupe keys live in PostgreSQL")
    queue = JobQueue(QueueBackend.POSTGRES, settings.resolved_database_url)
    await queue.start()
    batch_id = 10**12 + uuid.uuid4().int % 10**6
    pattern = f"batch:{batch_id}%"
    later = timedelta(hours=1)  # never dequeued by the session's workers meanwhile
    try:
        # The job a dead worker still holds, then the sweep's take-over, twice.
        await queue.enqueue([BatchJob(batch_id, delay=later)])
        await queue.enqueue([BatchJob(batch_id, delay=later, after="dead-worker")])
        await queue.enqueue([BatchJob(batch_id, delay=later, after="dead-worker")])
        async with await psycopg.AsyncConnection.connect(
            libpq_url(settings.resolved_database_url), autocommit=True
        ) as conn:
            cursor = await conn.execute(
                "SELECT dedupe_key FROM pgqueuer WHERE dedupe_key LIKE %s", (pattern,)
            )
            keys = sorted(str(row[0]) for row in await cursor.fetchall())
            await conn.execute("DELETE FROM pgqueuer WHERE dedupe_key LIKE %s", (pattern,))
    finally:
        await queue.aclose()
    assert keys == [f"batch:{batch_id}", f"batch:{batch_id}:dead-worker"]


@pytest.mark.postgres
async def test_sigterm_of_a_worker_process_mid_send_sends_nothing_twice(
    api_only: FastAPI, sim_control: httpx.Client
) -> None:
    """A real `clarion worker` on PostgreSQL, stopped with SIGTERM while it sends; a second one
    finishes: every device gets its push once, and nothing is counted as re-sent."""
    runtime: Runtime = api_only.state.runtime
    app = await new_app(runtime, sim_control, "ios")
    devices = 3000
    await seed_installations(
        runtime.sessions, app_id=app.app_id, count=devices, custom_id_prefix="t"
    )
    slow_provider(sim_control, 20)
    first = start_worker(runtime.settings)
    try:
        await send_to_all(api_only, app, "t", devices)

        async def sending() -> bool:
            return await count_sent(runtime) >= 250

        await eventually(sending, what="sending", timeout=60)
        os.killpg(first.pid, signal.SIGTERM)
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    sent_at_stop = await count_sent(runtime)
    assert sent_at_stop < devices, "the worker was not stopped mid-send"
    slow_provider(sim_control, 0)

    second = start_worker(runtime.settings)
    try:

        async def all_done() -> bool:
            async with runtime.sessions() as session:
                return not await session.scalar(
                    select(func.count())
                    .select_from(DeliveryBatch)
                    .where(DeliveryBatch.status != BatchStatus.DONE.value)
                )

        await eventually(all_done, what="all done", timeout=60)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)

    assert int(sim_control.get("/_sim/stats").json()["apns"]["accepted"]) == devices
    async with runtime.sessions() as session:
        reached = await session.scalar(
            select(func.count(func.distinct(PushEvent.install_id))).where(
                PushEvent.kind == "push_sent"
            )
        )
        resent = await session.scalar(select(func.sum(DeliveryBatch.resent)))
    assert (reached, resent) == (devices, 0)
