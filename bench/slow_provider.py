"""A slow provider: does a worker re-send pushes an APNs answering late but in time?

The simulators' h2 listener plays APNs (1 stream on a new connection until it has answered,
then --streams) and answers every push --answer-s seconds late; the worker's response timeout
is --timeout-s. N opted-in iOS installations get one send through the real delivery worker;
the bench checks outcomes logged = pushes accepted by the simulator = recipients, and prints
how many were sent twice (accepted beyond the recipients). Issue 22: answering in 15 s with a
30 s timeout made 10,000 recipients get 12,000 pushes, as time waiting for a stream counted.

    .venv/bin/python -m bench.slow_provider                      # 10,000, 15 s answers, 30 s
    .venv/bin/python -m bench.slow_provider --answer-s 2 --timeout-s 4 --streams 100   # scaled
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.common import (
    OUTCOME_KINDS,
    Deliveries,
    check_exactly_once,
    deliveries,
    fresh_database,
    outcomes_logged,
    report,
    simulated_runtime,
    simulator,
)
from bench.delivery_throughput import prepare
from clarion.delivery.models import BatchStatus, DeliveryBatch


async def run(
    args: argparse.Namespace, database_url: str, sim_url: str, listener: str, ca: Path, var: Path
) -> tuple[dict[str, Any], dict[str, int], Deliveries, Deliveries]:
    """The figures, and what the exactly-once check needs: outcomes logged, the simulator's
    deliveries before and after."""
    runtime, key = await simulated_runtime(database_url, sim_url, ca, var)
    settings = runtime.settings
    settings.apns_production_url = settings.apns_sandbox_url = listener
    settings.provider_response_timeout_seconds = args.timeout_s
    await prepare(runtime, key, args.devices)
    before = deliveries(sim_url, ca)

    started = time.monotonic()
    await runtime.start(workers=True)
    while True:
        await asyncio.sleep(0.5)
        async with runtime.sessions() as session:
            pending = await session.scalar(
                select(func.count())
                .select_from(DeliveryBatch)
                .where(DeliveryBatch.status != BatchStatus.DONE.value)
            )
            resent = await session.scalar(select(func.sum(DeliveryBatch.resent))) or 0
        if pending == 0:
            break
    elapsed = time.monotonic() - started
    logged = await outcomes_logged(runtime)
    await runtime.stop()
    after = deliveries(sim_url, ca)
    figures = {
        "devices": args.devices,
        "answer_s": args.answer_s,
        "response_timeout_s": args.timeout_s,
        "streams_per_connection": args.streams,
        "elapsed_s": round(elapsed, 1),
        "outcomes_logged": sum(logged[kind.value] for kind in OUTCOME_KINDS),
        "simulator_accepted": after.accepted - before.accepted,
        "sent_twice": after.repeated - before.repeated,
        "counted_resent": resent,
    }
    return figures, logged, before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--answer-s", type=float, default=15.0)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--streams", type=int, default=1000, help="per connection, once answered")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sim_url, ca = stack.enter_context(simulator(tmp / "sim", cpu=None))
        with httpx.Client(base_url=sim_url, verify=str(ca)) as control:
            control.put(
                "/_sim/connections", json={"initial_streams": 1, "streams": args.streams}
            ).raise_for_status()
            control.put(
                "/_sim/apns/faults", json={"delay_ms": round(args.answer_s * 1000)}
            ).raise_for_status()
            listener = control.get("/_sim/connections").json()["url"]
        url = fresh_database(stack, args.db, tmp)
        figures, logged, before, after = asyncio.run(run(args, url, sim_url, listener, ca, tmp))
    # The figures first (how many were sent twice is the point), then the check that fails.
    report("slow_provider", figures)
    check_exactly_once("slow provider", args.devices, logged, before, after)


if __name__ == "__main__":
    main()
