"""Campaign fan-out end to end: scheduler -> targeting -> outbox -> worker(s) -> APNs simulator.

Seeds N opted-in iOS installations (with regions, a custom attribute and a tag collection on
every user), then measures, on the same database:

1. the audience estimate of a 3-clause query (`c.` attribute, `t.` tags, `b.region`);
2. a campaign scheduled for T: how late its run starts after T;
3. the fan-out to all N installs, from T until every batch is delivered and every outcome is
   in the event log: notifications/s, this process's CPU per notification and its RSS;
4. that the simulator accepted exactly N pushes and no installation got two.

`--workers 2` adds a `clarion worker` process (its own scheduler and workers, sharing the
PostgreSQL job queue). The simulator runs on CPU 1, Clarion's processes on CPU 0.

`--label-cap` caps the campaign's label (`promo`, 2 pushes per 24 h), with one receipt already
there for every installation, so that each page is checked against the cap and every
installation still gets the push. `--fan-out-only` measures the fan-out alone (pages written
into an outbox nobody delivers), without and with that label cap, on the same database:
pages/s, and each page query's time.

    .venv/bin/python -m bench.campaign_fanout --devices 1000000 --db postgres
    .venv/bin/python -m bench.campaign_fanout --devices 1000000 --db postgres --workers 2
    .venv/bin/python -m bench.campaign_fanout --devices 1000000 --db postgres --label-cap
    .venv/bin/python -m bench.campaign_fanout --devices 1000000 --db postgres --fan-out-only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from bench.common import (
    analyze,
    check_exactly_once,
    cpu_seconds,
    create_ios_app,
    deliveries,
    fresh_database,
    outcomes_logged,
    pin,
    report,
    rss_mb,
    rss_summary,
    simulated_runtime,
    simulator,
    start_worker,
)
from clarion.apps.service import AppAccess, live_access
from clarion.campaigns import service as campaigns
from clarion.campaigns.models import Campaign, CampaignRun
from clarion.campaigns.schemas import CampaignBody
from clarion.campaigns.tasks import CampaignScheduler
from clarion.capping.models import RECEIPTS
from clarion.capping.service import label_key
from clarion.config import QueueBackend
from clarion.db import bulk_insert, transaction, utcnow
from clarion.delivery.models import BATCHES, Send
from clarion.demo import seed_installations
from clarion.events.models import PushEvent
from clarion.formats import wire_date
from clarion.queue import JobQueue
from clarion.runtime import Runtime, tune_garbage_collector
from clarion.sdk.models import Installation
from clarion.targeting.schemas import Targeting

ESTIMATE_QUERY = {
    "c.plan": "premium",
    "t.interests": {"$contains": ["sport"]},
    "b.region": "FR",
}


async def prepare(runtime: Runtime, key: dict[str, str], devices: int) -> AppAccess:
    app = await create_ios_app(runtime, key)
    started = time.monotonic()
    await seed_installations(runtime.sessions, app_id=app.id, count=devices)
    now = utcnow()
    async with transaction(runtime.sessions) as session:
        await session.execute(
            text(
                "UPDATE installations SET region = CASE id % 3 WHEN 0 THEN 'FR' "
                "WHEN 1 THEN 'US' ELSE 'DE' END WHERE app_id = :app"
            ),
            {"app": app.id},
        )
        await bulk_insert(
            session,
            "profile_attributes",
            ("app_id", "custom_id", "name", "kind", "text_value", "updated_at"),
            [
                (app.id, f"user-{n}", "plan", "string", "premium" if n % 4 == 0 else "free", now)
                for n in range(devices)
            ],
        )
        await bulk_insert(
            session,
            "profile_tags",
            ("app_id", "custom_id", "collection", "tag"),
            [
                (app.id, f"user-{n}", "interests", "sport" if n % 2 == 0 else "music")
                for n in range(devices)
            ],
        )
    await analyze(runtime)
    print(f"seeded {devices:,} installations and profiles in {time.monotonic() - started:.1f} s")
    return live_access(app)


LABEL = "promo"
LABEL_CAP = {"labels": {LABEL: {"max": 2, "hours": 24}}}


async def cap_the_label(runtime: Runtime, access: AppAccess, devices: int) -> None:
    """The label capped at 2 a day, and one push of it already sent to every installation an
    hour ago: each page is checked against the cap, and still reaches everyone."""
    sent_at = utcnow() - timedelta(hours=1)
    async with transaction(runtime.sessions) as session:
        await session.execute(
            text("UPDATE apps SET push_caps = :caps WHERE id = :app"),
            {"caps": json.dumps(LABEL_CAP), "app": access.app_id},
        )
        ids = list(
            await session.scalars(
                select(Installation.id).where(Installation.app_id == access.app_id)
            )
        )
        await bulk_insert(
            session,
            RECEIPTS.name,
            ("app_id", "installation_id", "key", "sent_at"),
            [(access.app_id, i, label_key(LABEL), sent_at) for i in ids],
        )
    assert len(ids) == devices
    await analyze(runtime)


def campaign_body(push_time: str, labels: list[str]) -> CampaignBody:
    return CampaignBody.model_validate(
        {
            "name": "Bench fan-out",
            "live": True,
            "push_time": push_time,
            "labels": labels,
            "targeting": {"languages": ["en"]},
            "messages": [{"language": "en", "title": "Bench", "body": "Fan-out"}],
        }
    )


async def fan_out_alone(
    runtime: Runtime, access: AppAccess, devices: int, *, labels: list[str]
) -> dict[str, Any]:
    """One campaign's fan-out into an outbox nobody delivers: pages/s, checked row by row."""
    queue = JobQueue(QueueBackend.MEMORY, "")
    await queue.start()
    try:
        async with transaction(runtime.sessions) as session:
            campaign = await campaigns.create_campaign(
                session, access=access, body=campaign_body("now", labels), now=utcnow()
            )
            campaign_id, token = campaign.id, campaign.token
        scheduler = CampaignScheduler(runtime.sessions, queue, runtime.settings)
        cpu0, started = cpu_seconds(), time.monotonic()
        await scheduler.tick()  # starts the run and waits for its fan-out
        elapsed, cpu = time.monotonic() - started, cpu_seconds() - cpu0
        await scheduler.aclose()
    finally:
        await queue.aclose()
    async with runtime.sessions() as session:
        run_row = await session.scalar(
            select(CampaignRun).where(CampaignRun.campaign_id == campaign_id)
        )
        assert run_row is not None
        assert run_row.state == "delivering", run_row.state
        written: list[int] = []
        for (recipients,) in await session.execute(
            select(BATCHES.c.recipients)
            .join(Send, Send.id == BATCHES.c.send_id)
            .where(Send.campaign_token == token)
        ):
            written += recipients["installations"]
        receipts = await session.scalar(
            select(func.count())
            .select_from(RECEIPTS)
            .where(RECEIPTS.c.app_id == access.app_id, RECEIPTS.c.key == label_key(LABEL))
        )
    # Every installation once (the cap of 2 leaves room for this push), and its receipt.
    assert len(written) == len(set(written)) == devices == run_row.targeted, len(written)
    return {
        "labels": labels,
        "pages": run_row.pages,
        "fan_out_s": round(elapsed, 2),
        "pages_per_s": round(run_row.pages / elapsed, 2),
        "installations_per_s": round(devices / elapsed),
        "cpu_us_per_installation": round(cpu / devices * 1e6, 1),
        "label_receipts_after": receipts,
    }


async def time_estimate(runtime: Runtime, access: AppAccess) -> dict[str, Any]:
    targeting = Targeting.model_validate({"query": ESTIMATE_QUERY})
    timings, result = [], None
    for _ in range(5):
        started = time.monotonic()
        async with runtime.sessions() as session:
            result = await campaigns.estimate_audience(
                session, access=access, targeting=targeting, now=utcnow()
            )
        timings.append(time.monotonic() - started)
    assert result is not None
    return {
        "query": ESTIMATE_QUERY,
        "matched": result.matched,
        "seconds_median": round(statistics.median(timings), 3),
        "seconds_all": [round(t, 3) for t in timings],
    }


async def fan_out_only(
    devices: int, database_url: str, sim_url: str, ca: Path, var: Path
) -> dict[str, Any]:
    runtime, key = await simulated_runtime(database_url, sim_url, ca, var)
    access = await prepare(runtime, key, devices)
    tune_garbage_collector()
    uncapped = await fan_out_alone(runtime, access, devices, labels=[])
    print(f"without a cap: {uncapped}")
    await cap_the_label(runtime, access, devices)
    capped = await fan_out_alone(runtime, access, devices, labels=[LABEL])
    print(f"with a label cap: {capped}")
    assert capped["label_receipts_after"] == 2 * devices
    await runtime.stop()
    return {
        "devices": devices,
        "page_size": runtime.settings.batch_size * 10,
        "label_cap": LABEL_CAP,
        "without_cap": uncapped,
        "with_label_cap_1_receipt_each": capped,
    }


async def run(
    devices: int,
    workers: int,
    database_url: str,
    sim_url: str,
    ca: Path,
    var: Path,
    *,
    label_cap: bool = False,
) -> dict[str, Any]:
    runtime, key = await simulated_runtime(database_url, sim_url, ca, var)
    access = await prepare(runtime, key, devices)
    estimate = await time_estimate(runtime, access)
    print(f"estimate: {estimate}")
    if label_cap:
        await cap_the_label(runtime, access, devices)

    extra = start_worker(runtime.settings) if workers == 2 else None
    tune_garbage_collector()  # as `clarion worker` does
    await runtime.start(workers=True)
    await asyncio.sleep(2)  # let the second process start its workers too
    before = deliveries(sim_url, ca)
    due = (utcnow() + timedelta(seconds=3)).replace(microsecond=0)
    body = campaign_body(wire_date(due), [LABEL] if label_cap else [])
    async with transaction(runtime.sessions) as session:
        campaign = await campaigns.create_campaign(session, access=access, body=body, now=utcnow())
        campaign_id, campaign_token = campaign.id, campaign.token

    rss: list[float] = [rss_mb()]
    cpu0 = cpu_seconds()
    while True:
        await asyncio.sleep(0.5)
        rss.append(rss_mb())
        async with runtime.sessions() as session:
            state = await session.scalar(select(Campaign.state).where(Campaign.id == campaign_id))
        if state == "completed":
            break
    done = utcnow()
    cpu = cpu_seconds() - cpu0
    async with runtime.sessions() as session:
        run_row = await session.scalar(
            select(CampaignRun).where(CampaignRun.campaign_id == campaign_id)
        )
        assert run_row is not None
    logged = await outcomes_logged(runtime, PushEvent.campaign_token == campaign_token)
    await runtime.stop()
    if extra is not None:
        extra.terminate()
        extra.wait(timeout=30)
    checked = check_exactly_once(
        "campaign fan-out", devices, logged, before, deliveries(sim_url, ca)
    )
    elapsed = (done - due).total_seconds()
    return {
        "devices": devices,
        "worker_processes": workers,
        "label_cap": LABEL_CAP if label_cap else None,
        "estimate_3_clauses": estimate,
        "start_delay_s": round((run_row.started_at - due).total_seconds(), 2),
        "fan_out_to_done_s": round(elapsed, 2),
        "notifications_per_s": round(devices / elapsed),
        **checked,
        "this_process_cpu_us_per_notification": round(cpu / devices * 1e6, 1),
        "this_process_rss_mb": rss_summary(rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--workers", type=int, choices=[1, 2], default=1)
    parser.add_argument("--label-cap", action="store_true", help="cap the campaign's label")
    parser.add_argument("--fan-out-only", action="store_true", help="no delivery: pages/s")
    args = parser.parse_args()
    if args.workers == 2 and args.db == "sqlite":
        parser.error("two worker processes need PostgreSQL")
    pin(0)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sim_url, ca = stack.enter_context(simulator(tmp / "sim", cpu=1))
        url = fresh_database(stack, args.db, tmp)
        if args.fan_out_only:
            figures = asyncio.run(fan_out_only(args.devices, url, sim_url, ca, tmp))
            name = f"campaign_fanout_only_{args.db}_{args.devices}"
        else:
            figures = asyncio.run(
                run(args.devices, args.workers, url, sim_url, ca, tmp, label_cap=args.label_cap)
            )
            cap = "_label_cap" if args.label_cap else ""
            name = f"campaign_fanout_{args.db}_{args.devices}_w{args.workers}{cap}"
    report(name, figures)


if __name__ == "__main__":
    main()
