"""What the API rate limits cost per call on the embedded default (SQLite, one process), and that
they refuse what they should.

Four `clarion serve --no-workers` processes, each on its own SQLite database:
- "on" and "on_again": the default limits (2,000/s per key, 5,000/s per company, 20/s per
  installation), twice: their difference is the noise floor of the comparison;
- "off": every limit 0;
- "tight": 5/s per key and per installation, for the refusal check.
Timed: sequential keep-alive calls alternating between the servers in rounds (so that the
machine's load drifts on all alike), on a server API route (`GET …/campaigns/list`, REST key +
app key) and on the SDK's in-app fetch (its fast path, spread over 1,000 installations so that
none nears its limit): p50 and p99 of each, and the difference of the p50s. Every timed call
must be a 200 (no refusal under the limits), and the tight server must answer exactly its burst
plus what refilled during the burst as 200s and the rest as 429/60 with Retry-After ≥ 1.
Then the limiter's own cost, in process: the in-memory buckets per call, and (with
--postgres) the shared store's round trip and its per-call cost with a lease.

    .venv/bin/python -m bench.rate_limit [--rounds 10 --calls 200] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from bench.common import pg_database, report, serve_clarion
from clarion.apps import service as apps_service
from clarion.apps.schemas import AppCreate
from clarion.config import Settings
from clarion.db import create_engine, transaction
from clarion.migrate import migrate
from clarion.ratelimit import Limit, RateLimits, SharedBuckets
from clarion.runtime import Runtime
from tests.support.simulator import free_port

INSTALLS = 1000
OFF = {
    "CLARION_API_RATE_LIMIT": "0",
    "CLARION_API_COMPANY_RATE_LIMIT": "0",
    "CLARION_SDK_INSTALL_RATE_LIMIT": "0",
    "CLARION_SDK_ADDRESS_RATE_LIMIT": "0",
}
TIGHT = {"CLARION_API_RATE_LIMIT": "5", "CLARION_SDK_INSTALL_RATE_LIMIT": "5"}


class Server:
    def __init__(self, name: str, var: Path, env: dict[str, str]) -> None:
        self.name = name
        self.var = var
        self.env = {"CLARION_VAR_DIR": str(var), **env}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.keys: dict[str, str] = {}

    async def provision(self) -> None:
        settings = Settings(var_dir=self.var)
        await asyncio.to_thread(migrate, settings)
        runtime = Runtime(settings)
        try:
            async with transaction(runtime.sessions) as session:
                company, rest_key = await apps_service.create_company(session, name="bench")
                _, keys = await apps_service.create_app(
                    session,
                    company_id=company.id,
                    app_in=AppCreate(name="bench", platform="ios"),
                    box=runtime.box,
                )
        finally:
            await runtime.engine.dispose()
        self.keys = {"rest": rest_key, "app": keys.api_key}

    @property
    def campaigns(self) -> str:
        return f"{self.base}/1.1/{self.keys['app']}/campaigns/list"

    def fetch(self, n: int) -> str:
        return f"{self.base}/sdk/v1/{self.keys['app']}/installations/i{n}/inapp-messages"


@contextmanager
def running(servers: list[Server]) -> Iterator[None]:
    with ExitStack() as stack:
        for server in servers:
            proc = serve_clarion(server.port, server.env, workers=False)
            stack.callback(proc.wait)
            stack.callback(proc.terminate)
        yield


def register(client: httpx.Client, server: Server) -> None:
    for n in range(INSTALLS):
        url = f"{server.base}/sdk/v1/{server.keys['app']}/installations/i{n}"
        client.put(url, json={"push_token": f"{n:064x}", "push_optin": True}).raise_for_status()


def timed(client: httpx.Client, url: str, headers: dict[str, str], statuses: Counter[int]) -> float:
    started = time.perf_counter()
    status = client.get(url, headers=headers).status_code
    elapsed = (time.perf_counter() - started) * 1000
    statuses[status] += 1
    return elapsed


def compare(on: Server, off: Server, again: Server, rounds: int, calls: int) -> dict[str, Any]:
    """`again` is a second server with the limits on: the difference between the two servers of
    one configuration is the noise floor, which the on/off difference must be read against."""
    labels = {"on": on, "off": off, "on_again": again}
    times: dict[str, dict[str, list[float]]] = {
        route: {label: [] for label in labels} for route in ("server_api", "sdk_fetch")
    }
    statuses: Counter[int] = Counter()
    with httpx.Client() as client:
        for server in labels.values():
            register(client, server)
        for _ in range(rounds):
            for label, server in labels.items():
                headers = {"X-Authorization": server.keys["rest"]}
                times["server_api"][label] += [
                    timed(client, server.campaigns, headers, statuses) for _ in range(calls)
                ]
                times["sdk_fetch"][label] += [
                    timed(client, server.fetch(n % INSTALLS), {}, statuses) for n in range(calls)
                ]
    expected = 2 * len(labels) * rounds * calls
    if statuses != Counter({200: expected}):
        raise SystemExit(f"every timed call should be a 200: {dict(statuses)}")
    figures: dict[str, Any] = {"timed_calls": expected}
    for route, by_label in times.items():
        p50 = {label: statistics.median(values) for label, values in by_label.items()}
        p99 = {
            label: sorted(values)[int(len(values) * 0.99) - 1] for label, values in by_label.items()
        }
        figures[route] = {
            "p50_ms_on": round(p50["on"], 3),
            "p50_ms_off": round(p50["off"], 3),
            "p50_ms_on_again": round(p50["on_again"], 3),
            "p99_ms_on": round(p99["on"], 3),
            "p99_ms_off": round(p99["off"], 3),
            "p50_added_ms": round(p50["on"] - p50["off"], 3),
            "p50_added_ms_again": round(p50["on_again"] - p50["off"], 3),
            "p50_noise_ms": round(p50["on_again"] - p50["on"], 3),
        }
    return figures


async def burst(urls: list[str], headers: dict[str, str]) -> tuple[list[httpx.Response], float]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as client:
        await client.get(urls[0].replace("/campaigns/list", "/nothing"))  # connect first
        started = time.perf_counter()
        answers = await asyncio.gather(*(client.get(url, headers=headers) for url in urls))
        return list(answers), time.perf_counter() - started


def refusals(tight: Server) -> dict[str, Any]:
    """50 calls at once on one key, then on one installation: the burst (5; 4 for the
    installation, whose registration took one) plus what refilled at 5/s during the burst are
    200s, the rest Batch's 429/60 with Retry-After."""
    figures: dict[str, Any] = {}
    url = f"{tight.base}/sdk/v1/{tight.keys['app']}/installations/i7"
    httpx.put(url, json={"push_token": "ab" * 32, "push_optin": True}).raise_for_status()
    for route, urls, headers, first in (
        ("server_api", [tight.campaigns] * 50, {"X-Authorization": tight.keys["rest"]}, 5),
        ("sdk_fetch", [tight.fetch(7)] * 50, {}, 4),
    ):
        answers, elapsed = asyncio.run(burst(urls, headers))
        counts = Counter(answer.status_code for answer in answers)
        most = first + math.ceil(5 * elapsed)
        if not (first <= counts[200] <= most and counts[200] + counts[429] == 50):
            raise SystemExit(f"{route}: expected {first}-{most} 200s, 429s for the rest: {counts}")
        for answer in answers:
            if answer.status_code == 429 and (
                answer.json()["code"] != 60 or int(answer.headers["Retry-After"]) < 1
            ):
                raise SystemExit(f"{route}: not Batch's 429: {answer.text} {answer.headers}")
        figures[route] = {"200": counts[200], "429": counts[429], "burst_s": round(elapsed, 3)}
    return figures


def in_process(calls: int) -> dict[str, Any]:
    """The limiter alone: microseconds a call on the in-memory buckets (nothing refused)."""
    # Limits no loop reaches: the same code as at any rate, nothing refused.
    huge = 1e12
    limits = RateLimits(
        Settings(
            api_rate_limit=huge,
            api_company_rate_limit=huge,
            sdk_install_rate_limit=huge,
            sdk_address_rate_limit=huge,
        ),
        engine=None,
    )
    started = time.perf_counter()
    for _ in range(calls):
        limits.local.take("app:1:live", Limit(huge, huge, ""))
    per_take = (time.perf_counter() - started) / calls

    async def api_calls() -> float:
        started = time.perf_counter()
        for n in range(calls):
            await limits.api_call(app_id=n % 50, is_dev=False, company_id=n % 10)
        return (time.perf_counter() - started) / calls

    per_api = asyncio.run(api_calls())
    started = time.perf_counter()
    for n in range(calls):
        limits.sdk_call(api_key="K" * 32, install_id=f"i{n % 10_000}", address="198.51.100.1")
    per_sdk = (time.perf_counter() - started) / calls
    return {
        "bucket_take_us": round(per_take * 1e6, 2),
        "server_api_call_us": round(per_api * 1e6, 2),
        "sdk_call_us": round(per_sdk * 1e6, 2),
    }


async def shared(calls: int) -> dict[str, Any]:
    """The PostgreSQL store: one round trip (p50), and a call's cost with its lease."""
    with pg_database() as url:
        settings = Settings(database_url=url)
        await asyncio.to_thread(migrate, settings)
        engine = create_engine(url, pool_size=2)
        try:
            buckets = SharedBuckets(engine)
            trips = []
            for n in range(500):  # a bucket per call: each is a round trip
                started = time.perf_counter()
                await buckets.take(f"k{n}", Limit(1000, 1000, ""))
                trips.append((time.perf_counter() - started) * 1000)
            limit = Limit(1e6, 1e6, "")  # 50,000 tokens a round trip
            started = time.perf_counter()
            for _ in range(calls):
                await buckets.take("hot", limit)
            per_call = (time.perf_counter() - started) / calls
            async with engine.connect() as connection:
                rows = await connection.scalar(text("SELECT count(*) FROM rate_limit_buckets"))
            if rows != 501:
                raise SystemExit(f"expected 501 buckets, found {rows}")
            return {
                "round_trip_p50_ms": round(statistics.median(trips), 3),
                "call_with_lease_us": round(per_call * 1e6, 2),
                "round_trips_for_calls": buckets.round_trips - 500,
            }
        finally:
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200, help="per route and server a round")
    parser.add_argument("--postgres", action="store_true", help="also the shared store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        servers = [
            Server("on", Path(tmp) / "on", {}),
            Server("off", Path(tmp) / "off", OFF),
            Server("tight", Path(tmp) / "tight", TIGHT),
            Server("on_again", Path(tmp) / "on_again", {}),
        ]
        for server in servers:
            asyncio.run(server.provision())
        with running(servers):
            figures: dict[str, Any] = {
                "compare": compare(servers[0], servers[1], servers[3], args.rounds, args.calls),
                "refusals": refusals(servers[2]),
            }
    figures["in_process"] = in_process(200_000)
    if args.postgres:
        figures["postgres_store"] = asyncio.run(shared(20_000))
    figures["load_average"] = list(os.getloadavg())
    report("rate_limit", figures)


if __name__ == "__main__":
    main()
