"""The SDK API's event batches (issue 18's figures): calls/s and latency per API process.

Seeds one Android app with N installations, then against one `clarion serve` process (no
workers, pinned to core 0; the load generator and this script on core 1):

1. times event-batch calls one at a time (round trip, an upper bound of server time): p50, p99;
2. event-batch calls per second under load: C keep-alive HTTP/1.1 connections, each walking
   its own share of the installations (bench/http_load.py, on core 1); calls/s over the window
   from the first call to the last answer, and p50/p99/max latency under load;
3. the CPU time per call over that run of the server process (so the rate one dedicated core
   reaches, whatever else the machine runs), of PostgreSQL's backends and of the load
   generator: on this 2-core machine they share the cores, which bounds the measured rate;
4. checks, before printing a rate, that every answer was a 202 and that `tracked_events`
   holds exactly 10 rows per call for each installation: nothing lost, nothing twice.

Each call carries 10 events (names, labels, attributes and tags, as an app sends them).

    .venv/bin/python -m bench.sdk_events --db sqlite --calls 60000
    .venv/bin/python -m bench.sdk_events --db postgres --calls 60000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

from bench.common import (
    analyze,
    cpu_seconds,
    fresh_database,
    pin,
    port_free,
    report,
    serve_clarion,
)
from clarion.apps import service as apps
from clarion.apps.schemas import AppCreate
from clarion.config import Settings
from clarion.db import transaction
from clarion.demo import seed_installations
from clarion.events.models import TrackedEvent
from clarion.migrate import migrate
from clarion.runtime import Runtime
from clarion.sdk.models import Installation

API_PORT = int(os.environ.get("CLARION_BENCH_API_PORT", "18005"))
EVENTS_PER_CALL = 10
ACCEPTED = '{"accepted":10}'


def batch() -> dict[str, Any]:
    """Ten events of the kinds an app tracks: bare names, labels, attributes, tags."""
    events: list[dict[str, Any]] = []
    for n in range(EVENTS_PER_CALL):
        event: dict[str, Any] = {"name": ["screen_view", "add_to_cart", "purchase"][n % 3]}
        if n % 2:
            event["label"] = f"item-{n}"
        if n % 3 == 2:
            event["attributes"] = {"amount": 12.5 + n, "currency": "EUR", "items": n}
            event["tags"] = ["promo", "mobile"]
        events.append(event)
    return {"events": events}


async def seed(runtime: Runtime, installations: int) -> tuple[int, str, list[str]]:
    async with transaction(runtime.sessions) as session:
        company, _ = await apps.create_company(session, name="Bench")
        app, keys = await apps.create_app(
            session,
            company_id=company.id,
            app_in=AppCreate(name="bench", platform="android"),
            box=runtime.box,
        )
    await seed_installations(runtime.sessions, app_id=app.id, count=installations)
    async with runtime.sessions() as session:
        ids = await session.scalars(
            select(Installation.install_id).where(Installation.app_id == app.id)
        )
        install_ids = list(ids)
    await analyze(runtime)
    return app.id, keys.api_key, install_ids


async def events_per_installation(runtime: Runtime, app_id: int) -> Counter[str]:
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(TrackedEvent.install_id, func.count())
            .where(TrackedEvent.app_id == app_id)
            .group_by(TrackedEvent.install_id)
        )
        return Counter({str(install_id): count for install_id, count in rows})


async def backend_pids(runtime: Runtime) -> list[int]:
    """PostgreSQL's backends serving this database (the server's pool among them)."""
    if runtime.engine.dialect.name != "postgresql":
        return []
    async with runtime.sessions() as session:
        pids = await session.scalars(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        )
        return list(pids)


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of those processes that still run (a backend may have ended: counted 0)."""
    total = 0.0
    for pid in pids:
        with suppress(FileNotFoundError):
            total += cpu_seconds(pid)
    return total


async def check_stored_as_sent(runtime: Runtime, app_id: int) -> None:
    """The events read back through the ORM are those sent (names, labels, JSON columns)."""
    sent = [
        (e["name"], e.get("label"), e.get("attributes"), e.get("tags")) for e in batch()["events"]
    ]
    async with runtime.sessions() as session:
        found = await session.execute(
            select(
                TrackedEvent.name, TrackedEvent.label, TrackedEvent.attributes, TrackedEvent.tags
            )
            .where(TrackedEvent.app_id == app_id)
            .order_by(TrackedEvent.id)
            .limit(EVENTS_PER_CALL)
        )
        stored = [tuple(row) for row in found]
    if stored != sent:
        raise SystemExit(f"the events stored differ from those sent: {stored} != {sent}")


def sequential(base: str, paths: list[str], body: bytes, count: int) -> list[float]:
    """Round trips of `count` calls one after another (ms); every answer must be a 202."""
    timings = []
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=base) as client:
        for n in range(count):
            started = time.perf_counter()
            answer = client.post(paths[n % len(paths)], content=body, headers=headers)
            timings.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 202 or answer.json() != {"accepted": EVENTS_PER_CALL}:
                raise SystemExit(f"call {n}: {answer.status_code} {answer.text[:200]}")
    return sorted(timings)


def share(install_ids: list[str], connections: int, calls: int) -> list[tuple[list[str], int]]:
    """Each connection's installations (every C-th) and number of calls (the rest spread)."""
    return [
        (install_ids[n::connections], calls // connections + (n < calls % connections))
        for n in range(connections)
    ]


def load(
    port: int, paths: dict[str, str], body: str, shares: list[tuple[list[str], int]], tmp: Path
) -> dict[str, Any]:
    """The calls of every share at once, a keep-alive connection each (bench/http_load.py, in
    a process of its own on this core)."""
    spec = {
        "host": "127.0.0.1",
        "port": port,
        "body": body,
        "headers": {"Content-Type": "application/json"},
        "connections": [[paths[i] for i in install_ids] for install_ids, _ in shares],
        "calls": [calls for _, calls in shares],
        "timeout": 900,
    }
    (tmp / "load.json").write_text(json.dumps(spec))
    out = tmp / "load-out.json"
    command = [sys.executable, "-m", "bench.http_load", str(tmp / "load.json"), str(out)]
    subprocess.run(command, check=True)
    result = json.loads(out.read_text())
    calls = sum(calls for _, calls in shares)
    if result["statuses"] != {"202": calls} or result["answers"] != {ACCEPTED: calls}:
        raise SystemExit(
            f"not every call was accepted: {result['statuses']}, {result['unanswered']} not"
            f" answered; answers: {str(result['answers'])[:500]}"
        )
    latencies = sorted(result["latencies_ms"])
    return {
        "calls_per_s": round(calls / result["seconds"]),
        "latency_under_load": {
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
            "max_ms": round(latencies[-1], 2),
        },
        "load_generator_cpu_ms_per_call": round(result["cpu_seconds"] * 1000 / calls, 3),
    }


async def measure(args: argparse.Namespace, url: str, var: Path) -> dict[str, Any]:
    secret = Fernet.generate_key().decode()
    settings = Settings(database_url=url, var_dir=var, secret_key=secret)
    await asyncio.to_thread(migrate, settings)
    runtime = Runtime(settings)
    app_id, api_key, install_ids = await seed(runtime, args.installations)
    paths = {i: f"/sdk/v1/{api_key}/installations/{i}/events" for i in install_ids}
    body = json.dumps(batch()).encode()
    env = {"CLARION_DATABASE_URL": url, "CLARION_VAR_DIR": str(var), "CLARION_SECRET_KEY": secret}
    base = f"http://127.0.0.1:{API_PORT}"
    port_free(API_PORT)
    server = serve_clarion(API_PORT, env, workers=False)
    pin(1)
    one_by_one = [paths[i] for i in install_ids]
    shares = share(install_ids, args.connections, args.calls)
    expected = Counter(one_by_one[n % len(one_by_one)] for n in range(300))  # warm-up
    expected.update(one_by_one[n % len(one_by_one)] for n in range(args.timed))
    for share_ids, calls in shares:
        expected.update(paths[share_ids[n % len(share_ids)]] for n in range(calls))
    try:
        if await events_per_installation(runtime, app_id):
            raise SystemExit("events before the run: the check below would not hold")
        await asyncio.to_thread(sequential, base, one_by_one, body, 300)  # warm-up
        timings = await asyncio.to_thread(sequential, base, one_by_one, body, args.timed)
        pids = await backend_pids(runtime)
        cpu_before = cpu_seconds(server.pid), cpu_of(pids)
        rate = await asyncio.to_thread(load, API_PORT, paths, body.decode(), shares, var)
        # On a shared machine the rate moves with the neighbours' load; the server's own CPU
        # time per call does not, and gives the rate a dedicated core would reach.
        cpu_ms = (cpu_seconds(server.pid) - cpu_before[0]) * 1000 / args.calls
        # With the backends the server's pool opened during the run (all their CPU is the run's).
        pids = sorted(set(pids) | set(await backend_pids(runtime)))
        database_ms = (cpu_of(pids) - cpu_before[1]) * 1000 / args.calls
        stored = await events_per_installation(runtime, app_id)
        by_path = Counter({paths[i]: count for i, count in stored.items()})
        if by_path != Counter({p: calls * EVENTS_PER_CALL for p, calls in expected.items()}):
            wrong = [p for p in paths.values() if by_path[p] != expected[p] * EVENTS_PER_CALL]
            raise SystemExit(f"{len(wrong)} installations did not get 10 rows a call: {wrong[:3]}")
        await check_stored_as_sent(runtime, app_id)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        await runtime.engine.dispose()
    return {
        "db": args.db,
        "installations": args.installations,
        "events_per_call": EVENTS_PER_CALL,
        "connections": args.connections,
        "calls": args.calls,
        **rate,
        "events_per_s": round(rate["calls_per_s"] * EVENTS_PER_CALL),
        "server_cpu_ms_per_call": round(cpu_ms, 3),
        "calls_per_s_per_dedicated_core": round(1000 / cpu_ms),
        "postgresql_cpu_ms_per_call": round(database_ms, 3) if pids else None,
        "latency_one_at_a_time": {
            "p50_ms": round(statistics.median(timings), 2),
            "p99_ms": round(timings[int(len(timings) * 0.99) - 1], 2),
            "calls": len(timings),
        },
        "rows_checked": stored.total(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--installations", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=60_000, help="under load")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--timed", type=int, default=2_000, help="calls timed one at a time")
    args = parser.parse_args()
    with ExitStack() as stack:
        var = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = fresh_database(stack, args.db, var)
        figures = asyncio.run(measure(args, url, var))
    report(f"sdk_events_{args.db}", figures)


if __name__ == "__main__":
    main()
