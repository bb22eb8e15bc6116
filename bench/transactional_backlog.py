"""A backlog of one-recipient transactional sends drained by ONE worker process: jobs/s and the
worker's CPU per job.

The Transactional API enqueues a job per call, so a backlog of sends (the worker stopped, or
outrun by a burst) is a backlog of jobs of one batch of one recipient each. Their cost is the
job's, not the push's: the claim, the loads, a recording, pgqueuer's own queries. This seeds N
opted-in iOS installations, writes one send with one batch per installation and enqueues each as
a job of its own (as N API calls would), then starts the workers and times until every batch is
done. Before the rate is printed: every send's outcome logged once, the simulator accepted one
push per installation, none twice. The simulator runs on CPU 1, the worker on CPU 0.

    .venv/bin/python -m bench.transactional_backlog --sends 3000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.common import (
    check_exactly_once,
    cpu_seconds,
    create_ios_app,
    deliveries,
    fresh_database,
    outcomes_logged,
    pin,
    report,
    simulated_runtime,
    simulator,
    until_every_batch_is_done,
)
from clarion.db import transaction, utcnow
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send
from clarion.demo import seed_installations
from clarion.queue import BatchJob
from clarion.runtime import tune_garbage_collector
from clarion.sdk.models import Installation


async def run(sends: int, database_url: str, sim_url: str, ca: Path, var: Path) -> dict[str, Any]:
    runtime, key = await simulated_runtime(database_url, sim_url, ca, var)
    app = await create_ios_app(runtime, key)
    await seed_installations(runtime.sessions, app_id=app.id, count=sends)
    now = utcnow()
    batch_ids: list[int] = []
    async with transaction(runtime.sessions) as session:
        installations = await session.scalars(
            select(Installation.id).where(Installation.app_id == app.id).order_by(Installation.id)
        )
        for installation in list(installations):
            send = Send(
                token=str(uuid.uuid4()),
                app_id=app.id,
                kind="transactional",
                group_id="backlog",
                content={"message": {"title": "Backlog", "body": "One of many"}},
                created_at=now,
            )
            session.add(send)
            await session.flush()
            batch = DeliveryBatch(
                send_id=send.id,
                recipients={"installations": [installation]},
                status=BatchStatus.PENDING.value,
                attempt=0,
                not_before=now,
                last_enqueued_at=now,
                created_at=now,
            )
            session.add(batch)
            await session.flush()
            batch_ids.append(batch.id)
    # One job each: enqueues awaited one after the other are not packed together.
    await runtime.queue.start(consume=False)
    for batch_id in batch_ids:
        await runtime.queue.enqueue([BatchJob(batch_id, recipients=1)])
    await runtime.queue.aclose()
    before = deliveries(sim_url, ca)

    tune_garbage_collector()  # as `clarion worker` does
    cpu0, t0 = cpu_seconds(), time.monotonic()
    await runtime.start(workers=True)
    await until_every_batch_is_done(runtime, every=0.25)
    elapsed, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    logged = await outcomes_logged(runtime)
    await runtime.stop()
    checked = check_exactly_once("backlog", sends, logged, before, deliveries(sim_url, ca))
    return {
        "sends": sends,
        **checked,
        "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(sends / elapsed),
        "worker_cpu_share": round(cpu / elapsed, 2),
        "worker_cpu_us_per_job": round(cpu / sends * 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=3000)
    args = parser.parse_args()
    pin(0)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sim_url, ca = stack.enter_context(simulator(tmp / "sim", cpu=1))
        url = fresh_database(stack, "postgres", tmp)
        figures = asyncio.run(run(args.sends, url, sim_url, ca, tmp))
    report(f"transactional_backlog_{args.sends}", figures)


if __name__ == "__main__":
    main()
