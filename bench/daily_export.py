"""A day of push events, and an opt-in snapshot, exported to the local S3 server.

Generates N push events of one UTC day and M installations in PostgreSQL (in SQL, quickly),
creates two destinations on a moto S3 bucket, then times `clarion exports run --day D` for
each in its own process (so its peak RSS is the export's alone) and checks the files' line
counts. Targets (issue 5): 10,000,000 events in <= 60 s with <= 200 MB RSS; 1,000,000 installs
in <= 10 s.

    .venv/bin/python -m bench.daily_export --events 10000000 --installs 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import text

from bench.common import ROOT, analyze, create_bench_app, pg_database, report, run_measured
from clarion.config import Settings
from clarion.db import transaction, utcnow
from clarion.exports import service as exports
from clarion.exports.schemas import DestinationIn
from clarion.migrate import migrate
from clarion.runtime import Runtime
from tests.support.simulator import LOCAL_SERVERS_ALLOW
from tests.support.storage_servers import running_s3

DAY = date(2026, 11, 23)


async def seed(settings: Settings, s3: Any, events: int, installs: int) -> int:
    runtime = Runtime(settings)
    try:
        async with transaction(runtime.sessions) as session:
            app = await create_bench_app(session, runtime.box, "ios")
            for kind in ("push_events", "optin_users"):
                body = DestinationIn.model_validate(
                    {
                        "name": kind,
                        "kind": kind,
                        "url": f"s3://{s3.bucket}/exports",
                        "credentials": {
                            "access_key": s3.access_key,
                            "secret_key": s3.secret_key,
                            "region": s3.region,
                            "endpoint_url": s3.endpoint_url,
                        },
                    }
                )
                await exports.create_destination(
                    session,
                    app_id=app.id,
                    body=body,
                    box=runtime.box,
                    outbound=runtime.outbound,
                    now=utcnow(),
                )
            started = time.monotonic()
            # Events spread over the day, a realistic mix of kinds and identities.
            await session.execute(
                text(
                    "INSERT INTO push_events (app_id, kind, occurred_at, platform, install_id,"
                    " custom_id, send_token, campaign_token, reason)"
                    " SELECT :app, (ARRAY['push_sent','push_sent','push_sent','push_opened',"
                    "'push_error'])[1 + n % 5], :day + (n * 86400.0 / :events) * interval '1 s',"
                    " 'ios', 'install-' || (n % 1000000), 'user-' || (n % 700000),"
                    " 'send-' || (n % 97), 'campaign-' || (n % 97),"
                    " CASE WHEN n % 5 = 4 THEN 'BadDeviceToken' END"
                    " FROM generate_series(0, :events - 1) AS n"
                ),
                {"app": app.id, "day": DAY, "events": events},
            )
            await session.execute(
                text(
                    "INSERT INTO installations (app_id, install_id, is_dev, push_token, custom_id,"
                    " push_optin, optin_changed_at, created_at, last_seen_at)"
                    " SELECT :app, 'install-' || n, false, md5(n::text), 'user-' || n,"
                    " n % 4 <> 0, now(), now(), now() FROM generate_series(0, :installs - 1) AS n"
                ),
                {"app": app.id, "installs": installs},
            )
        seconds = time.monotonic() - started
        print(f"seeded {events:,} events, {installs:,} installs in {seconds:.0f} s")
        await analyze(runtime)
        return app.id
    finally:
        await runtime.engine.dispose()


def timed_export(env: dict[str, str], app_id: int, name: str) -> dict[str, Any]:
    command = [str(ROOT / ".venv/bin/clarion"), "exports", "run", "--app-id", str(app_id)]
    command += ["--name", name, "--day", DAY.isoformat()]
    measured = run_measured(command, env)
    last_attempt = measured.last_line["history"][-1]
    return {
        "seconds": round(measured.seconds, 1),
        "query_and_file_seconds": last_attempt["write_seconds"],
        "uploaded_after_seconds": last_attempt["upload_done_seconds"],
        "sampled_max_rss_mb": round(max(measured.rss_samples_mb or [0.0])),
    }


def run(events: int, installs: int, database_url: str, tmp: Path) -> dict[str, Any]:
    secret = Fernet.generate_key().decode()
    settings = Settings(
        database_url=database_url,
        var_dir=tmp / "var",
        secret_key=secret,
        outbound_allow=LOCAL_SERVERS_ALLOW,  # the S3 server's endpoint_url is on 127.0.0.1
    )
    migrate(settings)
    figures: dict[str, Any] = {"events": events, "installs": installs}
    with running_s3(tmp / "s3") as s3:
        app_id = asyncio.run(seed(settings, s3, events, installs))
        env = {
            **os.environ,
            "CLARION_DATABASE_URL": database_url,
            "CLARION_VAR_DIR": str(tmp / "var"),
            "CLARION_SECRET_KEY": secret,
            # The export command's own settings: the S3 server's endpoint_url is on 127.0.0.1.
            "CLARION_OUTBOUND_ALLOW": json.dumps(LOCAL_SERVERS_ALLOW),
        }
        for name in ("push_events", "optin_users"):
            figures[name] = timed_export(env, app_id, name)
            key = f"exports/clarion_{app_id}_{name}_{DAY:%Y%m%d}.csv"
            body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"]
            lines = sum(chunk.count(b"\n") for chunk in body.iter_chunks(1 << 20))
            figures[name]["file_lines"] = lines  # the header and one line per row
            # Every event is of DAY, every installation a non-dev one: all in the file.
            rows = events if name == "push_events" else installs
            if lines != rows + 1:
                raise SystemExit(f"{name}: {lines:,} lines for {rows:,} rows and a header")
        # The largest of the waited children: the bigger of the two exports.
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        figures["peak_rss_mb"] = round(peak / 1024)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--installs", type=int, default=1_000_000)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        url = stack.enter_context(pg_database())
        figures = run(args.events, args.installs, url, Path(tmp))
    report(f"daily_export_{args.events}_{args.installs}", figures)


if __name__ == "__main__":
    main()
