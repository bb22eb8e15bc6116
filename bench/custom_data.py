"""Custom Data API bulk throughput: user updates/s through `clarion serve` (issue 4's figure).

Starts `clarion serve --no-workers` on a fresh PostgreSQL database (or SQLite), then posts bulk
calls of 10,000 users, each with five scalar attributes and a tag collection, from a client on the
other core, a few calls in flight. Reports users/s over the whole run (HTTP, validation and the
database writes included), and the CPU time per user update of the server process and, on
PostgreSQL, of the server's database backends: on a shared machine, wall-clock figures move with
other people's load while CPU per update mostly does not.

The default 60 calls (600,000 new users) take about 30 s: long enough for a plan that degrades
as the tables grow to show (one did: docs in clarion/custom_data/service.py).

    .venv/bin/python -m bench.custom_data --db postgres
    .venv/bin/python bench/custom_data.py --db postgres --calls 20
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

if not __package__:  # run as a file (python bench/custom_data.py) rather than with -m
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import backends_cpu, cpu_seconds, pg_database, pin, report, serve_clarion

API_PORT = int(os.environ.get("CLARION_BENCH_API_PORT", "18001"))
USERS_PER_CALL = 10_000


def _serve(database_url: str, var: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_VAR_DIR": str(var)}
    subprocess.run([sys.executable, "-m", "clarion.cli", "migrate"], env=env, check=True)
    return serve_clarion(API_PORT, env, workers=False)


def _keys(database_url: str, var: Path) -> dict[str, Any]:
    env = {**os.environ, "CLARION_DATABASE_URL": database_url, "CLARION_VAR_DIR": str(var)}
    out = subprocess.run(
        [sys.executable, "-m", "clarion.cli", "apps", "create", "--name", "b", "--platform", "ios"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    created: dict[str, Any] = json.loads(out)
    return created


def _body(call: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"user-{call}-{n}",
            "update": {
                "values": {
                    "u.plan": "premium" if n % 3 else "free",
                    "u.credit": n % 1000,
                    "u.score": n / 7,
                    "u.is_beneficiary": n % 2 == 0,
                    "date(u.signed_up)": 1_700_000_000 + n,
                    "ut.interests": ["sport", f"city-{n % 50}"],
                }
            },
        }
        for n in range(USERS_PER_CALL)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--in-flight", type=int, default=2)
    args = parser.parse_args()
    with ExitStack() as stack:
        var = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = (
            stack.enter_context(pg_database())
            if args.db == "postgres"
            else f"sqlite:///{var / 'bench.db'}"
        )
        proc = _serve(url, var)  # migrates first
        keys = _keys(url, var)
        try:
            pin(1)
            bodies = [_body(call) for call in range(args.calls)]  # built before the clock starts
            endpoint = f"http://127.0.0.1:{API_PORT}/1.0/{keys['api_key']}/data/users"
            headers = {"X-Authorization": keys["rest_api_key"]}
            with httpx.Client(headers=headers, timeout=120) as client:

                def post(body: list[dict[str, Any]]) -> int:
                    response = client.post(endpoint, json=body)
                    if response.status_code != 200:
                        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                    return response.status_code

                postgres = args.db == "postgres"
                backends_before = backends_cpu(url) if postgres else {}
                server_before = cpu_seconds(proc.pid)
                started = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(args.in_flight) as pool:
                    statuses = list(pool.map(post, bodies))
                elapsed = time.monotonic() - started
                server_cpu = cpu_seconds(proc.pid) - server_before
                # Backends opened during the run started from zero.
                database_cpu = sum(
                    cpu - backends_before.get(pid, 0.0)
                    for pid, cpu in (backends_cpu(url) if postgres else {}).items()
                )
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=15)
    users = args.calls * USERS_PER_CALL
    report(
        f"custom_data_{args.db}",
        {
            "database": args.db,
            "calls": args.calls,
            "users_per_call": USERS_PER_CALL,
            "values_per_user": 6,
            "statuses": sorted(set(statuses)),
            "elapsed_s": round(elapsed, 2),
            "user_updates_per_s": round(users / elapsed),
            "server_cpu_us_per_update": round(server_cpu / users * 1e6, 1),
            **(
                {"postgres_cpu_us_per_update": round(database_cpu / users * 1e6, 1)}
                if args.db == "postgres"
                else {}
            ),
        },
    )


if __name__ == "__main__":
    main()
