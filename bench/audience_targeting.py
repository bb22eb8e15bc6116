"""The cost of targeting a custom audience: the same estimate with and without one.

Seeds N installations (custom ids user-0 … user-N-1, regions FR/US/DE) and an audience of
N custom ids, half of which are users of the app, then times the audience estimate of a query
alone and of the same query restricted to the audience (median of 5 each, PostgreSQL).

    .venv/bin/python -m bench.audience_targeting --devices 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import text

from bench.common import analyze, create_bench_app, fresh_database, report
from clarion.apps.service import AppAccess, live_access
from clarion.audiences.models import AUDIENCE_MEMBERS, Audience, AudienceKind
from clarion.audiences.resolved import build_generation
from clarion.campaigns import service as campaigns
from clarion.config import Settings
from clarion.db import bulk_insert, transaction, utcnow
from clarion.demo import seed_installations
from clarion.migrate import migrate
from clarion.runtime import Runtime
from clarion.targeting.schemas import Targeting

QUERY = {"b.region": "FR"}


async def seed(runtime: Runtime, devices: int) -> AppAccess:
    async with transaction(runtime.sessions) as session:
        app = await create_bench_app(session, runtime.box, "android")
    started = time.monotonic()
    await seed_installations(runtime.sessions, app_id=app.id, count=devices)
    async with transaction(runtime.sessions) as session:
        await session.execute(
            text(
                "UPDATE installations SET region = CASE id % 3 WHEN 0 THEN 'FR' "
                "WHEN 1 THEN 'US' ELSE 'DE' END WHERE app_id = :app"
            ),
            {"app": app.id},
        )
        audience = Audience(
            app_id=app.id, name="bench", kind="custom_ids", generation=0, nb_ids=devices
        )
        session.add(audience)
        await session.flush()
        # Every other user of the app, and as many ids that match no installation.
        await bulk_insert(
            session,
            AUDIENCE_MEMBERS.name,
            ("audience_id", "generation", "member_id"),
            [
                (audience.id, 0, f"user-{n}" if n % 2 == 0 else f"stranger-{n}")
                for n in range(devices)
            ],
        )
        await build_generation(
            session, audience=audience, kind=AudienceKind.CUSTOM_IDS, generation=0
        )
    await analyze(runtime)
    print(f"seeded {devices:,} installations and members in {time.monotonic() - started:.1f} s")
    return live_access(app)


async def timed(runtime: Runtime, access: AppAccess, targeting: Targeting) -> dict[str, Any]:
    timings, matched = [], 0
    for _ in range(5):
        started = time.monotonic()
        async with runtime.sessions() as session:
            result = await campaigns.estimate_audience(
                session, access=access, targeting=targeting, now=utcnow()
            )
        timings.append(time.monotonic() - started)
        matched = result.matched
    return {"matched": matched, "seconds_median": round(statistics.median(timings), 3)}


async def run(devices: int, database_url: str, var: Path) -> dict[str, Any]:
    settings = Settings(
        database_url=database_url, var_dir=var, secret_key=Fernet.generate_key().decode()
    )
    await asyncio.to_thread(migrate, settings)
    runtime = Runtime(settings)
    access = await seed(runtime, devices)
    alone = await timed(runtime, access, Targeting.model_validate({"query": QUERY}))
    with_audience = await timed(
        runtime,
        access,
        Targeting.model_validate({"query": QUERY, "custom_audiences": ["bench"]}),
    )
    await runtime.engine.dispose()
    return {
        "devices": devices,
        "audience_members": devices,
        "query": QUERY,
        "query_alone": alone,
        "query_and_audience": with_audience,
        "ratio": round(with_audience["seconds_median"] / alone["seconds_median"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = fresh_database(stack, args.db, tmp)
        figures = asyncio.run(run(args.devices, url, tmp))
    report(f"audience_targeting_{args.db}_{args.devices}", figures)


if __name__ == "__main__":
    main()
