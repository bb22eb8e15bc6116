"""Delivery throughput from ONE worker process to the APNs simulator, outcomes logged.

Seeds N opted-in iOS installations, commits one send split into batches of 1,000 installation
ids (the shape campaign fan-out produces), starts the workers and times until every batch is
done and every outcome is in the event log. Reports notifications/s, the worker's CPU and RSS
over time, and h2load's ceiling against the same simulator, so the figure measures Clarion and
not the sink. The simulator runs on CPU 1, Clarion on CPU 0.

    .venv/bin/python -m bench.delivery_throughput --devices 200000 --db sqlite
    .venv/bin/python -m bench.delivery_throughput --devices 1000000 --db postgres
    .venv/bin/python -m bench.delivery_throughput --db postgres --latency-ms 50   # a distant APNs
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
from sqlalchemy import insert, select

from bench.common import (
    TOPIC,
    check_exactly_once,
    cpu_seconds,
    create_ios_app,
    deliveries,
    fresh_database,
    h2load,
    outcomes_logged,
    pin,
    report,
    rss_mb,
    rss_summary,
    simulated_runtime,
    simulator,
    until_every_batch_is_done,
)
from clarion.db import transaction, utcnow
from clarion.delivery.models import DeliveryBatch, Send
from clarion.demo import seed_installations
from clarion.runtime import Runtime, tune_garbage_collector
from clarion.sdk.models import Installation


async def prepare(runtime: Runtime, key: dict[str, str], devices: int) -> int:
    app = await create_ios_app(runtime, key)
    started = time.monotonic()
    await seed_installations(runtime.sessions, app_id=app.id, count=devices)
    print(f"seeded {devices:,} installations in {time.monotonic() - started:.1f} s")

    # One send, batches of installation ids read with keyset pagination (never all at once).
    now = utcnow()
    async with transaction(runtime.sessions) as session:
        send = Send(
            token=str(uuid.uuid4()),
            app_id=app.id,
            kind="transactional",
            group_id="bench",
            content={"message": {"title": "Bench", "body": "Throughput"}},
            created_at=now,
        )
        session.add(send)
        await session.flush()
        send_id = send.id
    last_id = 0
    batch_size = runtime.settings.batch_size
    while True:
        async with transaction(runtime.sessions) as session:
            ids = list(
                await session.scalars(
                    select(Installation.id)
                    .where(Installation.app_id == app.id, Installation.id > last_id)
                    .order_by(Installation.id)
                    .limit(batch_size * 20)
                )
            )
            if not ids:
                break
            last_id = ids[-1]
            await session.execute(
                insert(DeliveryBatch),
                [
                    {
                        "send_id": send_id,
                        "recipients": {"installations": ids[i : i + batch_size]},
                        "status": "pending",
                        "attempt": 0,
                        "not_before": now,
                        "last_enqueued_at": now,
                        "created_at": now,
                    }
                    for i in range(0, len(ids), batch_size)
                ],
            )
    return send_id


async def run(
    devices: int, db: str, database_url: str, sim_url: str, ca: Path, var: Path
) -> dict[str, Any]:
    runtime, key = await simulated_runtime(database_url, sim_url, ca, var)
    await prepare(runtime, key, devices)
    before = deliveries(sim_url, ca)

    rss: list[float] = [rss_mb()]
    cpu0, t0 = cpu_seconds(), time.monotonic()
    tune_garbage_collector()  # as `clarion worker` does
    await runtime.start(workers=True)
    await until_every_batch_is_done(runtime, every=0.5, each=lambda: rss.append(rss_mb()))
    elapsed, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    logged = await outcomes_logged(runtime)
    await runtime.stop()
    checked = check_exactly_once("delivery", devices, logged, before, deliveries(sim_url, ca))

    return {
        "database": db,
        "devices": devices,
        **checked,
        "elapsed_s": round(elapsed, 2),
        "notifications_per_s": round(devices / elapsed),
        "worker_cpu_us_per_notification": round(cpu / devices * 1e6, 1),
        "worker_rss_mb": rss_summary(rss),
        "_key": key,
    }


def ceiling(sim_url: str, key: dict[str, str], tmp: Path) -> dict[str, float]:
    token = jwt.encode(
        {"iss": key["team_id"], "iat": int(time.time())},
        key["private_key_pem"],
        algorithm="ES256",
        headers={"kid": key["key_id"]},
    )
    body = tmp / "body.json"
    body.write_text(
        '{"aps":{"alert":{"title":"Bench","body":"Throughput"},"sound":"default"},'
        '"com.batch":{"i":"' + str(uuid.uuid4()) + '"}}'
    )
    url = f"{sim_url}/3/device/{secrets.token_hex(32)}"
    headers = [
        "-H",
        f"authorization: bearer {token}",
        "-H",
        f"apns-topic: {TOPIC}",
        "-H",
        "apns-push-type: alert",
    ]
    return {
        f"h2load_c{c}_m100": h2load(
            ["-n", "200000", "-c", str(c), "-m", "100", "-d", str(body), *headers, url]
        )["req_per_s"]
        for c in (1, 4)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="the simulator answers each push this late, as a distant APNs would (no h2load run)",
    )
    args = parser.parse_args()
    pin(0)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sim_url, ca = stack.enter_context(simulator(tmp / "sim", cpu=1))
        if args.latency_ms:
            httpx.put(
                f"{sim_url}/_sim/apns/faults", json={"delay_ms": args.latency_ms}, verify=str(ca)
            ).raise_for_status()
        url = fresh_database(stack, args.db, tmp)
        figures = asyncio.run(run(args.devices, args.db, url, sim_url, ca, tmp))
        key = figures.pop("_key")
        if args.latency_ms:
            figures["simulator_latency_ms"] = args.latency_ms
        else:
            figures |= ceiling(sim_url, key, tmp)
    suffix = f"_latency{args.latency_ms}ms" if args.latency_ms else ""
    report(f"delivery_{args.db}_{args.devices}{suffix}", figures)


if __name__ == "__main__":
    main()
