"""Never open a database session while holding one (docs/conventions.md): the engines refuse it
at once (clarion.db.OneConnectionPerTaskPool, decision 0033) rather than let SQLite's one
connection wait for itself for the pool's timeout, 300 s, with every API call and worker of the
process waiting behind it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from clarion.db import NestedSessionError, is_retryable, transaction, utcnow
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send
from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.test_campaign_runs import Clock, add_installs, scheduler
from tests.test_campaigns import created

# Far below the 300 s a nested session waited on SQLite before the check; far above what the
# work below takes on a loaded machine.
PATIENCE = 20.0


async def test_a_session_opened_while_holding_one_is_refused(runtime: Runtime) -> None:
    async with transaction(runtime.sessions) as outer:
        await outer.execute(text("SELECT 1"))
        with pytest.raises(NestedSessionError, match="never open a database session while"):
            async with asyncio.timeout(PATIENCE), transaction(runtime.sessions) as inner:
                await inner.execute(text("SELECT 1"))
        # The refusal left the outer session usable.
        assert (await outer.execute(text("SELECT 2"))).scalar() == 2


async def test_another_task_waits_its_turn_and_one_task_may_open_sessions_in_turn(
    runtime: Runtime,
) -> None:
    async def read() -> int:
        async with transaction(runtime.sessions) as session:
            return int((await session.execute(text("SELECT 3"))).scalar_one())

    async with transaction(runtime.sessions) as outer:
        await outer.execute(text("SELECT 1"))
        other = asyncio.create_task(read())  # on SQLite it waits for `outer` to finish
    assert await other == 3
    assert await read() == 3  # the task holds nothing any more


async def retry_batches(runtime: Runtime, send_id: int) -> list[DeliveryBatch]:
    async with runtime.sessions() as session:
        found = await session.scalars(
            select(DeliveryBatch).where(DeliveryBatch.send_id == send_id, DeliveryBatch.attempt > 0)
        )
        return list(found)


async def test_a_retry_batch_of_a_stopped_send_closes_without_waiting(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    # Its closing used to open a second session while the delivery's held the connection.
    installs = await add_installs(runtime, ios_app, 2)
    refused = installs[0].push_token
    # A 503 asking for a retry in 10 minutes: the retry batch waits for the test, not the worker.
    sim_control.post(
        f"/_sim/apns/tokens/{refused}/fail", json={"status": 503, "count": 1, "retry_after": 600}
    ).raise_for_status()
    token = await created(api, ios_app, push_time="now")
    await scheduler(runtime, Clock(datetime.now(UTC))).tick()
    async with runtime.sessions() as session:
        send = await session.scalar(select(Send).where(Send.campaign_token == token))
    assert send is not None
    deadline = time.monotonic() + PATIENCE
    while not (retries := await retry_batches(runtime, send.id)):
        assert time.monotonic() < deadline, "no retry batch was written"
        await asyncio.sleep(0.05)

    # The stop lands while the first batch is on the wire: it finds no pending batch to close,
    # then the retry is written. That is this state: the send stopped, its retry pending, due.
    [retry] = retries
    assert retry.status == BatchStatus.PENDING.value
    async with transaction(runtime.sessions) as session:
        await session.execute(update(Send).where(Send.id == send.id).values(cancelled_at=utcnow()))
        await session.execute(
            update(DeliveryBatch).where(DeliveryBatch.id == retry.id).values(not_before=utcnow())
        )

    assert runtime.deliverer is not None
    async with asyncio.timeout(PATIENCE):
        await runtime.deliverer.deliver_batches([retry.id])
        # The module's workers may have claimed it first (their sweep re-enqueues due batches).
        while (closed := (await retry_batches(runtime, send.id))[0]).status != "done":
            await asyncio.sleep(0.05)
    assert closed.last_reason == "Stopped"
    assert sim_control.get(f"/_sim/apns/tokens/{refused}").json()["count"] == 0


async def test_a_deadlock_is_retryable_and_a_broken_rule_is_not(runtime: Runtime) -> None:
    """A delivery worker's recording that PostgreSQL aborts as a deadlock is tried again rather
    than failing its batches (which would send their unrecorded outcomes again): is_retryable
    must tell a real deadlock from an error that would fail again."""
    if runtime.settings.is_sqlite:
        pytest.skip("SQLite has one connection: two transactions cannot deadlock")
    async with transaction(runtime.sessions) as session:
        await session.execute(
            text("CREATE TABLE IF NOT EXISTS deadlock_probe (id int PRIMARY KEY)")
        )
        await session.execute(text("DELETE FROM deadlock_probe"))
        await session.execute(text("INSERT INTO deadlock_probe VALUES (1), (2)"))
    both_hold_one = asyncio.Barrier(2)

    async def lock_in_order(first: int, second: int) -> None:
        async with transaction(runtime.sessions) as session:
            lock = text("SELECT id FROM deadlock_probe WHERE id = :id FOR UPDATE")
            await session.execute(lock, {"id": first})
            await both_hold_one.wait()
            await session.execute(lock, {"id": second})

    async with asyncio.timeout(PATIENCE):
        outcomes = await asyncio.gather(
            lock_in_order(1, 2), lock_in_order(2, 1), return_exceptions=True
        )
    failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(failures) == 1  # PostgreSQL aborted one of the two, the other went on
    assert is_retryable(failures[0])

    with pytest.raises(DBAPIError) as duplicate:
        async with transaction(runtime.sessions) as session:
            await session.execute(text("INSERT INTO deadlock_probe VALUES (1)"))
    assert not is_retryable(duplicate.value)
    assert not is_retryable(RuntimeError("not the database"))
