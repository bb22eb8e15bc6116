"""A large id file on the local S3 server ingested into an audience by `clarion imports run`.

Writes a one-column file of N custom ids (with a header) to a moto S3 bucket, creates an import
source for it, then times `clarion imports run` in its own process (so its peak RSS is the
ingestion's alone) and checks the audience's size. The target (issue 4): 10,000,000 lines in
<= 60 s with <= 200 MB RSS, on PostgreSQL.

    .venv/bin/python -m bench.audience_file_ingest --lines 10000000
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
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select

from bench.common import (
    ROOT,
    create_bench_app,
    fresh_database,
    report,
    rss_summary,
    run_measured,
)
from clarion.audiences.models import Audience
from clarion.config import Settings
from clarion.db import transaction, utcnow
from clarion.imports import service as imports
from clarion.imports.schemas import ImportSourceIn
from clarion.migrate import migrate
from clarion.runtime import Runtime
from tests.support.simulator import LOCAL_SERVERS_ALLOW
from tests.support.storage_servers import running_s3


def write_id_file(path: Path, lines: int) -> int:
    with path.open("w") as out:
        out.write("custom_id\n")
        step = 100_000
        for start in range(0, lines, step):
            out.write("".join(f"user-{n:09d}\n" for n in range(start, min(start + step, lines))))
    return path.stat().st_size


async def create_source(settings: Settings, s3: Any) -> int:
    runtime = Runtime(settings)
    try:
        async with transaction(runtime.sessions) as session:
            app = await create_bench_app(session, runtime.box, "ios")
            body = ImportSourceIn.model_validate(
                {
                    "name": "crm",
                    "url": f"s3://{s3.bucket}/exports",
                    "credentials": {
                        "access_key": s3.access_key,
                        "secret_key": s3.secret_key,
                        "region": s3.region,
                        "endpoint_url": s3.endpoint_url,
                    },
                    "id_type": "custom_ids",
                    "audience_name": "big",
                    "id_column": "custom_id",
                }
            )
            await imports.create_source(
                session,
                app_id=app.id,
                body=body,
                box=runtime.box,
                outbound=runtime.outbound,
                now=utcnow(),
            )
            return app.id
    finally:
        await runtime.engine.dispose()


async def audience_size(settings: Settings) -> int:
    runtime = Runtime(settings)
    try:
        async with runtime.sessions() as session:
            nb_ids = await session.scalar(select(Audience.nb_ids).where(Audience.name == "big"))
            return int(nb_ids or 0)
    finally:
        await runtime.engine.dispose()


def run(lines: int, database_url: str, tmp: Path) -> dict[str, Any]:
    secret = Fernet.generate_key().decode()
    settings = Settings(
        database_url=database_url,
        var_dir=tmp / "var",
        secret_key=secret,
        outbound_allow=LOCAL_SERVERS_ALLOW,  # the S3 server's endpoint_url is on 127.0.0.1
    )
    migrate(settings)
    with running_s3(tmp / "s3") as s3:
        started = time.monotonic()
        size = write_id_file(tmp / "ids.csv", lines)
        s3.put_file("exports/ids.csv", tmp / "ids.csv")
        (tmp / "ids.csv").unlink()
        print(f"{lines:,} lines ({size / 1e6:.0f} MB) on S3 in {time.monotonic() - started:.0f} s")
        app_id = asyncio.run(create_source(settings, s3))
        env = {
            **os.environ,
            "CLARION_DATABASE_URL": database_url,
            "CLARION_VAR_DIR": str(tmp / "var"),
            "CLARION_SECRET_KEY": secret,
            # The command's own settings: the S3 server's endpoint_url is on 127.0.0.1 (without
            # this the run failed at once, and the bench printed a rate over nothing ingested).
            "CLARION_OUTBOUND_ALLOW": json.dumps(LOCAL_SERVERS_ALLOW),
        }
        command = [str(ROOT / ".venv/bin/clarion"), "imports", "run"]
        command += ["--app-id", str(app_id), "--name", "crm"]
        measured = run_measured(command, env, every=0.5)
        seconds = measured.seconds
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ingested = measured.last_line
    nb_ids = asyncio.run(audience_size(settings))
    if not (ingested["status"] == "succeeded" and ingested["ids_accepted"] == lines == nb_ids):
        raise SystemExit(
            f"not every id ingested: {lines:,} lines, run {ingested}, audience of {nb_ids:,}"
        )
    return {
        "lines": lines,
        "file_mb": round(size / 1e6),
        "seconds": round(seconds, 1),
        "lines_per_s": round(lines / seconds),
        "peak_rss_mb": round(peak_rss_mb),
        "rss_mb_every_0_5_s": rss_summary([s for s in measured.rss_samples_mb if s > 0] or [0.0]),
        "status": ingested["status"],
        "ids_accepted": ingested["ids_accepted"],
        "audience_nb_ids": nb_ids,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = fresh_database(stack, args.db, tmp)
        figures = run(args.lines, url, tmp)
    report(f"audience_file_ingest_{args.db}_{args.lines}", figures)


if __name__ == "__main__":
    main()
