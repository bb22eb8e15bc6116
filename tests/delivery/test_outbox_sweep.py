"""The outbox sweep (clarion.delivery.tasks.Deliverer.sweep_outbox) enqueues again the pending
batches whose job was lost, and only those. The sweep reads every pending batch of the database:
this module's database holds only what its test writes."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from clarion.delivery.tasks import Deliverer
from clarion.queue import BatchJob, JobQueue, Lane
from clarion.runtime import Runtime
from tests.delivery.test_leases import Clock, pool, workers, write_batch

__all__ = ["pool", "workers"]  # test_leases's fixtures


async def test_the_outbox_sweep_enqueues_a_lost_batch_and_not_one_waiting_in_the_queue(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
    held_queue: JobQueue,
) -> None:
    """Two batches pending past the sweep's grace: one whose job waits in the queue (packed
    with another batch's, so the dedupe key is not its own), one whose job was lost. In the
    1,000,000-install run with 2 workers, stale jobs like the first piled up to 97,000."""
    clock = Clock()
    packed_with = await write_batch(runtime, sim_control, clock, 1)
    waiting = await write_batch(runtime, sim_control, clock, 1)
    lost = await write_batch(runtime, sim_control, clock, 1)
    await held_queue.enqueue([BatchJob(packed_with, recipients=1), BatchJob(waiting, recipients=1)])

    async def jobs() -> int:
        return sum(row.count for row in await held_queue.lane(Lane.PROMPT).qm.queries.queue_size())

    assert await jobs() == 1
    deliverer = workers(clock)
    clock.advance(runtime.settings.sweep_interval_seconds + 1)

    swept = await deliverer.sweep_outbox()

    assert (swept, await jobs()) == (1, 2)  # the lost one only
    assert await held_queue.holding([lost]) == {lost}
    clock.advance(runtime.settings.sweep_interval_seconds + 1)
    assert await deliverer.sweep_outbox() == 0  # all three wait in the queue now
