"""Transactional API on the embedded default (SQLite, workers in the same process).

Starts `clarion serve` exactly as `make run` would (one process: API + workers), wired to the
simulators, registers one device and fires single-recipient sends at it:
- throughput: h2load over HTTP/1.1 keep-alive, N sends, C connections: accepted sends/s (201s);
- latency: a steady stream well below saturation, accepted -> delivered per send, from the event
  log (push_sent time minus the send's creation time): p50 / p95.
The API process runs on CPU 0; the simulator and the load generator share CPU 1.

    .venv/bin/python -m bench.transactional_api --sends 3000 --connections 32
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.common import (
    Deliveries,
    deliveries,
    h2load,
    pin,
    report,
    serve_clarion,
    simulator,
)
from tests.support.simulator import free_port

API_PORT = int(os.environ.get("CLARION_BENCH_API_PORT") or free_port())
TOPIC = "com.example.bench"
LOG = Path(__file__).parent / "results" / "transactional_api.log"  # the API process's stderr


def start_api(
    tmp: Path, sim_url: str, ca: Path, *, workers: bool, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`extra`: more of the process's environment (settings a bench compares)."""
    LOG.parent.mkdir(exist_ok=True)
    env = {
        "CLARION_VAR_DIR": str(tmp),
        "CLARION_APNS_PRODUCTION_URL": sim_url,
        "CLARION_APNS_SANDBOX_URL": sim_url,
        "CLARION_PROVIDER_CA_FILE": str(ca),
        **(extra or {}),
    }
    return serve_clarion(API_PORT, env, workers=workers, stderr=LOG.open("wb"))


def provision(tmp: Path, sim_url: str, ca: Path) -> dict[str, str]:
    env = {**os.environ, "CLARION_VAR_DIR": str(tmp)}
    created = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "clarion.cli",
                "apps",
                "create",
                "--name",
                "bench",
                "--platform",
                "ios",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    key = httpx.post(f"{sim_url}/_sim/apns/keys", json={"topics": [TOPIC]}, verify=str(ca)).json()
    api = f"http://127.0.0.1:{API_PORT}"
    headers = {"X-Authorization": created["rest_api_key"]}
    httpx.put(
        f"{api}/admin/v1/apps/{created['id']}/credentials/apns",
        headers=headers,
        json={
            "key_id": key["key_id"],
            "team_id": key["team_id"],
            "private_key": key["private_key_pem"],
            "topic": TOPIC,
        },
    ).raise_for_status()
    httpx.put(
        f"{api}/sdk/v1/{created['api_key']}/installations/bench-device",
        json={"push_token": "ab" * 32, "custom_id": "bench-user", "push_optin": True},
    ).raise_for_status()
    return created


def pending_batches(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM delivery_batches WHERE status != 'done'"
        ).fetchone()
    return int(row[0])


def latencies(db: Path, since: str) -> list[float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT s.created_at, e.occurred_at FROM sends s JOIN push_events e "
            "ON e.send_token = s.token AND e.kind = 'push_sent' WHERE s.created_at > ?",
            (since,),
        ).fetchall()
    return [
        (datetime.fromisoformat(done) - datetime.fromisoformat(created)).total_seconds() * 1000
        for created, done in rows
    ]


def count_sends(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM sends").fetchone()[0])


def check_all_created(status_line: str, created: int, sent: int) -> None:
    """Only a 201 is an accepted send: every request must have been one, and each a send in
    the outbox (h2load counts any 2xx, and its req/s counts failures too)."""
    # "status codes: 10000 2xx, 0 3xx, 0 4xx, 0 5xx"
    codes = {
        part.split()[1]: int(part.split()[0]) for part in status_line.split(":", 1)[1].split(",")
    }
    if codes.get("2xx") != sent or created != sent:
        raise SystemExit(
            f"not every send was accepted: {status_line}; {created} sends in the outbox "
            f"for {sent} requests"
        )


def check_delivered(db: Path, simulator_saw: Deliveries) -> dict[str, int]:
    """Every send delivered once: one outcome logged per send, as many pushes accepted (by a
    simulator that served this run only). All go to one device, so the simulator's per-token
    repeats say nothing here; a send's outcome logged twice, or an extra push, would."""
    with sqlite3.connect(db) as conn:
        sends, outcomes, sends_logged = conn.execute(
            "SELECT (SELECT count(*) FROM sends), count(*), count(DISTINCT send_token) "
            "FROM push_events WHERE kind IN ('push_sent', 'push_error', 'token_deleted')"
        ).fetchone()
    counts = {
        "sends_in_all": sends,  # the throughput run's and the latency run's
        "outcomes_logged": outcomes,
        "sends_with_an_outcome": sends_logged,
        "simulator_accepted": simulator_saw.accepted,
    }
    if not sends == outcomes == sends_logged == simulator_saw.accepted:
        raise SystemExit(f"not every send delivered exactly once: {counts}")
    return counts


def drain_then_time_steady_sends(
    db: Path, url: str, body: bytes, rest_key: str, rate: int
) -> tuple[float, list[float]]:
    """Let the workers drain the backlog, then send 10 s of sends at `rate`/s: latencies (ms)."""
    drain_started = time.monotonic()
    while pending_batches(db) and time.monotonic() - drain_started < 600:
        time.sleep(0.5)
    drain_s = time.monotonic() - drain_started
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with httpx.Client(headers={"X-Authorization": rest_key}) as client:
        started = time.monotonic()
        for n in range(rate * 10):
            answer = client.post(url, content=body, headers={"Content-Type": "application/json"})
            if answer.status_code != 201:
                raise SystemExit(f"a send was refused: {answer.status_code} {answer.text}")
            delay = started + (n + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    while pending_batches(db) and time.monotonic() - started < 600:
        time.sleep(0.2)
    return drain_s, sorted(latencies(db, since))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=3_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--steady-rate", type=int, default=20, help="sends/s for the latency run")
    parser.add_argument(
        "--api-only",
        action="store_true",
        help="no workers in the API process: measures intake alone, skips delivery and latency",
    )
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as tmp_name,
        simulator(Path(tmp_name) / "sim", cpu=1) as (
            sim_url,
            ca,
        ),
    ):
        tmp = Path(tmp_name)
        provision_env_db = tmp / "clarion.db"
        api_proc = start_api(tmp, sim_url, ca, workers=not args.api_only)
        try:
            created = provision(tmp, sim_url, ca)
            pin(1)
            body = tmp / "send.json"
            body.write_text(
                json.dumps(
                    {
                        "group_id": "bench",
                        "recipients": {"custom_ids": ["bench-user"]},
                        "message": {"title": "Bench", "body": "Hello"},
                    }
                )
            )
            url = f"http://127.0.0.1:{API_PORT}/1.1/{created['api_key']}/transactional/send"
            result = h2load(
                [
                    "--h1",
                    "-n",
                    str(args.sends),
                    "-c",
                    str(args.connections),
                    "-d",
                    str(body),
                    "-H",
                    f"X-Authorization: {created['rest_api_key']}",
                    "-H",
                    "Content-Type: application/json",
                    url,
                ]
            )
            status_line = next(
                ln for ln in result["output"].splitlines() if ln.startswith("status codes")
            )
            created_201 = count_sends(provision_env_db)
            check_all_created(status_line, created_201, args.sends)

            delivered: dict[str, int] = {}
            drain_s, lat = (
                (None, [])
                if args.api_only
                else drain_then_time_steady_sends(
                    provision_env_db,
                    url,
                    body.read_bytes(),
                    created["rest_api_key"],
                    args.steady_rate,
                )
            )
            if not args.api_only:
                delivered = check_delivered(provision_env_db, deliveries(sim_url, ca))
        finally:
            os.killpg(api_proc.pid, 15)
            api_proc.wait(timeout=15)

    report(
        "transactional_api",
        {
            "sends": args.sends,
            "connections": args.connections,
            # 201s only (each checked to be a send in the outbox), over h2load's duration.
            "accepted_per_s": round(created_201 / result["seconds"], 1),
            "created_201": created_201,
            "workers_in_api_process": not args.api_only,
            "backlog_drained_in_s": round(drain_s, 1) if drain_s is not None else None,
            "h2load_status_codes": status_line,
            **delivered,
            "latency_sends": len(lat),
            "steady_rate_per_s": args.steady_rate,
            "accepted_to_delivered_ms_p50": round(statistics.median(lat), 1) if lat else None,
            "accepted_to_delivered_ms_p95": round(lat[int(len(lat) * 0.95)], 1) if lat else None,
        },
    )


if __name__ == "__main__":
    main()
