"""Automations' dispatcher on PostgreSQL (issue 20's figures), with 1,000,000 installations:

(a) latency: a zero-delay automation, entries arriving at a steady rate; from the event
    accepted to the push accepted by the APNs simulator, p50 / p99 (target 1 s / 3 s). With
    clarion.automations.service.enter_events present, Trigger Events are posted to a real
    `clarion serve` (bulk calls) and the answer is "accepted"; without it, entries are
    written as rows (the row committed is "accepted"), which the report says.
(b) backlog: 1,000,000 pending delayed entries, due over `--spread` seconds: each push's
    lateness (accepted by the simulator minus due_at), p50 / p99 / max (target: within 5 s),
    and the worker's RSS, sampled every second (target: flat).

One real `clarion worker` (pinned to CPU 0) dispatches and delivers; the simulator has CPU 1.
Push times come from the event log (push_sent is written once APNs has answered: a little
after the simulator's own receipt) for every entry, and from the simulator's receipts for a
sample. Every entry is checked sent exactly once (entries, push_sent rows, distinct
installations, the simulator's accepted count) before any figure is printed.

    .venv/bin/python -m bench.automation_dispatch --installations 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.common import (
    analyze,
    check_exactly_once,
    control,
    cpu_seconds,
    deliveries,
    fresh_database,
    outcomes_logged,
    pin,
    report,
    rss_mb,
    rss_summary,
    serve_clarion,
    simulated_runtime,
    simulator,
    start_worker,
)
from clarion.apps import service as apps
from clarion.apps.schemas import AppCreate
from clarion.automations import service as automations_service
from clarion.automations.models import AutomationEntry
from clarion.campaigns import service as campaigns
from clarion.campaigns.schemas import CampaignBody
from clarion.config import Settings
from clarion.db import bulk_insert, transaction, utcnow
from clarion.demo import apns_credentials_from_sim
from clarion.events.models import PushEvent
from clarion.runtime import Runtime

TOPIC = "com.example.bench"
API_PORT = int(os.environ.get("CLARION_BENCH_API_PORT", "18700"))
MESSAGE = [
    {"language": "en", "title": "Bench", "body": "Still thinking about {{ event.attributes.sku }}?"}
]
# One event per automation: the zero-delay one's events must not enter the delayed one.
NOW_EVENT, LATER_EVENT = "ue.bench_now", "ue.bench_later"


async def seed(runtime: Runtime, key: dict[str, str], installations: int) -> dict[str, Any]:
    """A company and an iOS app on the simulator, `installations` opted-in users (COPY)."""
    async with transaction(runtime.sessions) as session:
        company, rest_key = await apps.create_company(session, name="Bench")
        app, keys = await apps.create_app(
            session,
            company_id=company.id,
            app_in=AppCreate(name="bench", platform="ios"),
            box=runtime.box,
        )
        apps.set_apns_credentials(app, apns_credentials_from_sim(key, TOPIC), runtime.box)
    started = time.monotonic()
    now = utcnow()
    step = 200_000
    for first in range(0, installations, step):
        async with transaction(runtime.sessions) as session:
            await bulk_insert(
                session,
                "installations",
                (
                    "app_id",
                    "install_id",
                    "is_dev",
                    "push_token",
                    "custom_id",
                    "push_optin",
                    "language",
                    "created_at",
                    "last_seen_at",
                ),
                [
                    (app.id, f"i-{n}", False, f"{n:064x}", f"user-{n}", True, "en", now, now)
                    for n in range(first, min(first + step, installations))
                ],
            )
    await analyze(runtime)
    print(f"seeded {installations:,} installations in {time.monotonic() - started:.1f} s")
    return {"app": app, "rest_key": rest_key, "api_key": keys.api_key}


async def new_automation(
    runtime: Runtime, app: Any, name: str, delay: int, event: str
) -> tuple[int, str]:
    body = CampaignBody.model_validate(
        {
            "name": name,
            "live": True,
            "trigger": {"event": event, "delay_seconds": delay},
            "messages": MESSAGE,
        }
    )
    async with transaction(runtime.sessions) as session:
        campaign = await campaigns.create_campaign(
            session, access=apps.live_access(app), body=body, now=utcnow()
        )
        return campaign.id, campaign.token


def event_of(n: int, name: str) -> dict[str, Any]:
    return {"name": name, "label": None, "attributes": {"sku": f"SKU-{n}"}, "tags": []}


async def entries_copy(
    runtime: Runtime,
    app_id: int,
    campaign_id: int,
    rows: list[tuple[int, datetime]],
    event: str,
) -> None:
    """Entries as the event intake writes them: (user number, due_at)."""
    now = utcnow()
    async with transaction(runtime.sessions) as session:
        await bulk_insert(
            session,
            AutomationEntry.__tablename__,
            (
                "app_id",
                "campaign_id",
                "custom_id",
                "event",
                "entered_at",
                "due_at",
                "timed",
                "state",
            ),
            [
                (
                    app_id,
                    campaign_id,
                    f"user-{n}",
                    json.dumps(event_of(n, event)),
                    now,
                    due,
                    False,
                    "pending",
                )
                for n, due in rows
            ],
        )


async def push_times(runtime: Runtime, token: str) -> dict[str, datetime]:
    """custom id -> when its push_sent was recorded, for one automation."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(PushEvent.custom_id, PushEvent.occurred_at).where(
                PushEvent.campaign_token == token, PushEvent.kind == "push_sent"
            )
        )
        return {row.custom_id or "": row.occurred_at for row in rows}


async def check_once(
    runtime: Runtime, campaign_id: int, token: str, expected: int
) -> dict[str, int]:
    """Every entry sent, one push_sent each, no installation twice: or the bench fails."""
    async with runtime.sessions() as session:
        states = dict(
            (
                await session.execute(
                    select(AutomationEntry.state, func.count())
                    .where(AutomationEntry.campaign_id == campaign_id)
                    .group_by(AutomationEntry.state)
                )
            ).all()
        )
        sent = await session.scalar(
            select(func.count()).where(
                PushEvent.campaign_token == token, PushEvent.kind == "push_sent"
            )
        )
        distinct = await session.scalar(
            select(func.count(func.distinct(PushEvent.install_id))).where(
                PushEvent.campaign_token == token, PushEvent.kind == "push_sent"
            )
        )
    counts = {
        "entries_sent": states.get("sent", 0),
        "push_sent": sent or 0,
        "installations": distinct or 0,
    }
    if (
        states != {"sent": expected}
        or counts["push_sent"] != expected
        or counts["installations"] != expected
    ):
        raise SystemExit(f"not every entry sent exactly once: states {states}, {counts}")
    return counts


async def wait_sent(
    runtime: Runtime, token: str, expected: int, timeout: float, worker: subprocess.Popen[bytes]
) -> list[float]:
    """Until `expected` push_sent rows for the automation; the worker's RSS every second."""
    rss: list[float] = []
    deadline = time.monotonic() + timeout
    while True:
        rss.append(rss_mb(worker.pid))
        async with runtime.sessions() as session:
            sent = await session.scalar(
                select(func.count()).where(
                    PushEvent.campaign_token == token, PushEvent.kind == "push_sent"
                )
            )
        if (sent or 0) >= expected:
            return rss
        if worker.poll() is not None:
            raise SystemExit("the worker died")
        if time.monotonic() > deadline:
            raise SystemExit(f"only {sent:,} of {expected:,} pushes after {timeout:.0f} s")
        await asyncio.sleep(1.0)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "p99_s": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 3),
        "max_s": round(ordered[-1], 3),
        "count": len(ordered),
    }


def simulator_sample(
    sim_url: str, ca: Path, users: list[int], since: dict[int, datetime]
) -> dict[str, float]:
    """The simulator's own receipt time minus `since` (accepted, or due) for a sample of
    users. The simulator keeps the messages of its last 100,000 tokens: the sample is drawn
    from users pushed among the last 90,000."""
    delays = []
    with httpx.Client(base_url=sim_url, verify=str(ca), http2=True) as client:
        for n in random.sample(users, min(1000, len(users))):
            messages = client.get(f"/_sim/apns/tokens/{n:064x}").json()["messages"]
            if messages:
                delays.append(messages[-1]["received_at"] - since[n].timestamp())
    if not delays:
        raise SystemExit("the simulator holds none of the sampled pushes")
    return percentiles(delays)


async def latency_phase(
    runtime: Runtime,
    seeded: dict[str, Any],
    worker: subprocess.Popen[bytes],
    sim_url: str,
    ca: Path,
    *,
    rate: int,
    seconds: int,
    first_user: int,
) -> dict[str, Any]:
    app = seeded["app"]
    campaign_id, token = await new_automation(runtime, app, "Zero delay", 0, NOW_EVENT)
    through_api = hasattr(automations_service, "enter_events")
    api: subprocess.Popen[bytes] | None = None
    if through_api:
        settings = runtime.settings
        env = {
            "CLARION_DATABASE_URL": settings.database_url,
            "CLARION_VAR_DIR": str(settings.var_dir),
            "CLARION_SECRET_KEY": settings.secret_key,
        }
        api = serve_clarion(API_PORT, env, workers=False)
    accepted: dict[int, datetime] = {}
    every = 0.05  # a group of entries every 50 ms
    per_group = max(1, round(rate * every))
    total = rate * seconds
    users = list(range(first_user, first_user + total))
    # The backlog phase pushed these users' tokens already: the exactly-once check counts
    # from a simulator that has seen none of them.
    with control(sim_url, ca) as client:
        client.post("/_sim/reset").raise_for_status()
    before = deliveries(sim_url, ca)
    started = time.monotonic()
    cpu_before = cpu_seconds(worker.pid)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{API_PORT}") as client:
            for index, start in enumerate(range(0, total, per_group)):
                group = users[start : start + per_group]
                await asyncio.sleep(max(0.0, started + index * every - time.monotonic()))
                if through_api:
                    answer = await client.post(
                        f"/1.0/{seeded['api_key']}/events/users",
                        headers={"X-Authorization": seeded["rest_key"]},
                        json=[
                            {
                                "id": f"user-{n}",
                                "events": [{"name": NOW_EVENT, "attributes": {"sku": f"SKU-{n}"}}],
                            }
                            for n in group
                        ],
                    )
                    if answer.status_code != 202:
                        raise SystemExit(f"trigger events: {answer.status_code} {answer.text}")
                else:
                    now = utcnow()
                    rows = [(n, now) for n in group]
                    await entries_copy(runtime, app.id, campaign_id, rows, NOW_EVENT)
                at = utcnow()
                accepted.update((n, at) for n in group)
        offered = total / (time.monotonic() - started)
        await wait_sent(runtime, token, total, 120, worker)
        cpu = cpu_seconds(worker.pid) - cpu_before
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
    counts = await check_once(runtime, campaign_id, token, total)
    logged = await outcomes_logged(runtime, PushEvent.campaign_token == token)
    checked = check_exactly_once("latency", total, logged, before, deliveries(sim_url, ca))
    pushed = await push_times(runtime, token)
    log = [(pushed[f"user-{n}"] - accepted[n]).total_seconds() for n in users]
    return {
        "events_from": "Trigger Events API (bulk)"
        if through_api
        else "entries written as rows (no enter_events on this branch)",
        "offered_per_s": round(offered),
        "entries": total,
        **counts,
        **checked,
        "worker_cpu_us_per_entry": round(cpu / total * 1e6),
        "accepted_to_push_sent_logged": percentiles(log),
        "accepted_to_simulator_receipt_sample": simulator_sample(
            sim_url, ca, users[-90_000:], accepted
        ),
    }


async def backlog_phase(
    runtime: Runtime,
    seeded: dict[str, Any],
    settings: Settings,
    sim_url: str,
    ca: Path,
    *,
    entries: int,
    spread: int,
    lead: int,
    start: Callable[[Settings], subprocess.Popen[bytes]],
) -> dict[str, Any]:
    app = seeded["app"]
    campaign_id, token = await new_automation(runtime, app, "Delayed", 3600, LATER_EVENT)
    first_due = utcnow() + timedelta(seconds=lead)
    step = spread / entries
    dues = {n: first_due + timedelta(seconds=n * step) for n in range(entries)}
    started = time.monotonic()
    chunk = 200_000
    for first in range(0, entries, chunk):
        await entries_copy(
            runtime,
            app.id,
            campaign_id,
            [(n, dues[n]) for n in range(first, min(first + chunk, entries))],
            LATER_EVENT,
        )
    await analyze(runtime)
    print(f"wrote {entries:,} pending entries in {time.monotonic() - started:.1f} s")
    worker = start(settings)
    if utcnow() >= first_due:
        raise SystemExit("the entries were due before the worker started: raise --lead")
    before = deliveries(sim_url, ca)
    rss = await wait_sent(runtime, token, entries, spread + lead + 600, worker)
    cpu = cpu_seconds(worker.pid)
    counts = await check_once(runtime, campaign_id, token, entries)
    logged = await outcomes_logged(runtime, PushEvent.campaign_token == token)
    checked = check_exactly_once("backlog", entries, logged, before, deliveries(sim_url, ca))
    pushed = await push_times(runtime, token)
    lateness = [(pushed[f"user-{n}"] - dues[n]).total_seconds() for n in range(entries)]
    async with runtime.sessions() as session:
        written = [
            (row.finished_at - row.due_at).total_seconds()
            for row in await session.execute(
                select(AutomationEntry.finished_at, AutomationEntry.due_at).where(
                    AutomationEntry.campaign_id == campaign_id,
                    AutomationEntry.finished_at.is_not(None),
                )
            )
        ]
    within = sum(1 for late in lateness if late <= 5.0)
    return {
        "entries": entries,
        "due_over_s": spread,
        "due_per_s": round(entries / spread),
        **counts,
        **checked,
        "lateness_push_sent_logged": percentiles(lateness),
        # Due to written into the outbox (the dispatcher's share of the lateness).
        "lateness_entry_sent": percentiles(written),
        "sent_within_5_s_of_due": f"{within / entries:.4%}",
        "lateness_simulator_receipt_sample": simulator_sample(
            sim_url, ca, list(range(entries))[-90_000:], dues
        ),
        "worker_rss_mb": rss_summary(rss),
        # Dispatch and delivery of an entry, and the worker's start-up.
        "worker_cpu_us_per_entry": round(cpu / entries * 1e6),
    }


async def run(
    args: argparse.Namespace, database_url: str, sim_url: str, ca: Path, var: Path
) -> dict[str, Any]:
    runtime, key = await simulated_runtime(database_url, sim_url, ca, var)
    seeded = await seed(runtime, key, args.installations)
    # The machine may be shared: its load says how much of it the run had.
    figures: dict[str, Any] = {
        "installations": args.installations,
        "load_average_at_start": os.getloadavg()[0],
    }
    settings = runtime.settings
    workers: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings) -> subprocess.Popen[bytes]:
        workers.append(start_worker(settings))
        return workers[-1]

    try:
        if args.phase in ("both", "backlog"):
            figures["backlog"] = await backlog_phase(
                runtime,
                seeded,
                settings,
                sim_url,
                ca,
                entries=min(args.entries, args.installations),
                spread=args.spread,
                lead=args.lead,
                start=start,
            )
        else:
            start(settings)
            await asyncio.sleep(3)  # its workers up
        worker = workers[0]
        if args.phase in ("both", "latency"):
            figures["latency"] = await latency_phase(
                runtime,
                seeded,
                worker,
                sim_url,
                ca,
                rate=args.rate,
                seconds=args.seconds,
                first_user=0,
            )
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
        await runtime.engine.dispose()
    figures["load_average_at_end"] = os.getloadavg()[0]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--installations", type=int, default=1_000_000)
    parser.add_argument("--phase", choices=["both", "latency", "backlog"], default="both")
    parser.add_argument("--rate", type=int, default=1000, help="(a) entries per second")
    parser.add_argument("--seconds", type=int, default=30, help="(a) for how long")
    parser.add_argument("--entries", type=int, default=1_000_000, help="(b) pending entries")
    parser.add_argument("--spread", type=int, default=300, help="(b) due over this many seconds")
    parser.add_argument(
        "--lead", type=int, default=60, help="(b) the first due this long after writing starts"
    )
    args = parser.parse_args()
    pin(0)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sim_url, ca = stack.enter_context(simulator(tmp / "sim", cpu=1))
        url = fresh_database(stack, "postgres", tmp)
        figures = asyncio.run(run(args, url, sim_url, ca, tmp))
    report(f"automation_dispatch_{args.installations}", figures)


if __name__ == "__main__":
    main()
