"""What metrics and structured logs cost: the transactional API's and the delivery worker's
throughput, with and without them (issue 24: at most 5 %).

- observed: CLARION_METRICS_PORT set (counting on, `/metrics` served, scraped at the end of
  each run to check that it counted every call and notification) and CLARION_LOG_FORMAT=json;
- plain: the default, neither (nothing counted, text logs).

The two alternate, in the order A B B A A B ... (a drift of the machine over the runs weighs on
both alike), and the medians are compared. Each run checks its own result before its rate
counts: every send accepted and delivered once, every recipient reached exactly once.

(a) the transactional API on the embedded default: `clarion serve` (API and workers, SQLite),
    started and loaded with h2load as bench/transactional_api.py does (API on CPU 0), rate
    limits off (their default, 2,000/s per key, would cap the rate measured);
(b) the delivery worker: N iOS installations, one send in batches of 1,000 (as
    bench/delivery_throughput.py prepares them), delivered by a `clarion worker` process on
    CPU 0 to the APNs simulator on CPU 1; timed from its "worker running" line until no batch
    is left, with its CPU per notification. PostgreSQL by default (what a scaled-out worker
    uses), or SQLite.

    .venv/bin/python -m bench.observability_overhead --runs 3
    .venv/bin/python -m bench.observability_overhead --only delivery --devices 200000 --db sqlite
    .venv/bin/python -m bench.observability_overhead --only api --access-log   # a line per call
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    Deliveries,
    analyze,
    check_exactly_once,
    cpu_seconds,
    deliveries,
    fresh_database,
    h2load,
    outcomes_logged,
    pin,
    report,
    simulated_runtime,
    simulator,
    start_worker,
    until_every_batch_is_done,
)
from bench.delivery_throughput import prepare
from bench.transactional_api import (
    API_PORT,
    check_all_created,
    check_delivered,
    count_sends,
    pending_batches,
    provision,
    start_api,
)
from tests.support.simulator import free_port

CONFIGURATIONS = ("plain", "observed")
SEND_ROUTE = "/1.1/{api_key}/transactional/send"


def order(runs: int) -> list[str]:
    """A B B A A B ...: `runs` of each."""
    pairs = [CONFIGURATIONS if n % 2 == 0 else CONFIGURATIONS[::-1] for n in range(runs)]
    return [configuration for pair in pairs for configuration in pair]


def scraped(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def check_counted(
    port: int, expected: dict[tuple[str, tuple[tuple[str, str], ...]], float]
) -> None:
    """An observed run counted what it did (else it measured the plain configuration)."""
    samples = scraped(port)
    found = {key: samples.get(key, 0.0) for key in expected}
    if found != expected:
        raise SystemExit(f"/metrics did not count the run: {found}, expected {expected}")


def observed_env(observed: bool) -> tuple[dict[str, str], int | None]:
    if not observed:
        return {}, None
    port = free_port()
    return {"CLARION_METRICS_PORT": str(port), "CLARION_LOG_FORMAT": "json"}, port


# -- (a) the transactional API ----------------------------------------------------------------


def api_run(
    observed: bool, sends: int, connections: int, sim_url: str, ca: Path, *, access_log: bool
) -> dict[str, float]:
    """Accepted sends/s of one run, once every send is checked delivered once. `access_log`:
    the observed runs also write a line per call (CLARION_ACCESS_LOG)."""
    env, metrics_port = observed_env(observed)
    if observed and access_log:
        env["CLARION_ACCESS_LOG"] = "true"
    env |= {"CLARION_API_RATE_LIMIT": "0", "CLARION_API_COMPANY_RATE_LIMIT": "0"}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        db = tmp / "clarion.db"
        before = deliveries(sim_url, ca)
        api = start_api(tmp, sim_url, ca, workers=True, extra=env)
        try:
            created = provision(tmp, sim_url, ca)
            body = tmp / "send.json"
            body.write_text(
                '{"group_id": "bench", "recipients": {"custom_ids": ["bench-user"]}, '
                '"message": {"title": "Bench", "body": "Hello"}}'
            )
            url = f"http://127.0.0.1:{API_PORT}/1.1/{created['api_key']}/transactional/send"
            cpu_started = cpu_seconds(api.pid)
            result = h2load(
                [
                    *["--h1", "-n", str(sends), "-c", str(connections), "-d", str(body)],
                    *["-H", f"X-Authorization: {created['rest_api_key']}"],
                    *["-H", "Content-Type: application/json", url],
                ]
            )
            cpu = cpu_seconds(api.pid) - cpu_started
            status_line = next(
                ln for ln in result["output"].splitlines() if ln.startswith("status codes")
            )
            check_all_created(status_line, count_sends(db), sends)
            waited = time.monotonic()
            while pending_batches(db) and time.monotonic() - waited < 600:
                time.sleep(0.5)
            after = deliveries(sim_url, ca)
            # One device gets every push: the simulator's new accepts are the run's pushes.
            check_delivered(
                db,
                Deliveries(after.tokens - before.tokens, after.repeated - before.repeated, []),
            )
            if metrics_port is not None:
                check_counted(
                    metrics_port,
                    {
                        (
                            "clarion_http_requests_total",
                            (("method", "POST"), ("route", SEND_ROUTE), ("status", "201")),
                        ): float(sends),
                        (
                            "clarion_notifications_total",
                            (("outcome", "sent"), ("platform", "ios")),
                        ): float(sends),
                    },
                )
        finally:
            os.killpg(api.pid, signal.SIGTERM)
            api.wait(timeout=30)
    return {
        "accepted_per_s": sends / float(result["seconds"]),
        # What the API process spent meanwhile, its workers' deliveries included: less
        # sensitive than the rate to what else the machine runs.
        "api_cpu_us_per_send": cpu / sends * 1e6,
    }


# -- (b) the delivery worker -------------------------------------------------------------------


async def delivery_run(
    observed: bool, devices: int, database_url: str, sim_url: str, ca: Path, var: Path
) -> dict[str, float]:
    runtime, key = await simulated_runtime(database_url, sim_url, ca, var)
    await prepare(runtime, key, devices)
    await analyze(runtime)
    _, metrics_port = observed_env(observed)
    settings = runtime.settings.model_copy(
        update={"metrics_port": metrics_port or 0, "log_format": "json" if observed else "text"}
    )
    before = deliveries(sim_url, ca)
    with (var / "worker.log").open("wb") as log:
        worker = start_worker(settings, stdout=subprocess.PIPE, stderr=log)
    try:
        assert worker.stdout is not None
        line = await asyncio.to_thread(worker.stdout.readline)
        if not line.startswith(b"worker running"):
            raise SystemExit(f"the worker did not start: {line!r}, {(var / 'worker.log')}")
        started, cpu_started = time.monotonic(), cpu_seconds(worker.pid)
        await until_every_batch_is_done(runtime, every=0.25)
        elapsed, cpu = time.monotonic() - started, cpu_seconds(worker.pid) - cpu_started
        if metrics_port is not None:
            outcome = (("outcome", "sent"), ("platform", "ios"))
            check_counted(metrics_port, {("clarion_notifications_total", outcome): devices})
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    check_exactly_once(
        "delivery", devices, await outcomes_logged(runtime), before, deliveries(sim_url, ca)
    )
    await runtime.engine.dispose()
    return {
        "notifications_per_s": devices / elapsed,
        "worker_cpu_us_per_notification": cpu / devices * 1e6,
    }


def one_delivery(observed: bool, devices: int, db: str, sim_url: str, ca: Path) -> dict[str, float]:
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = fresh_database(stack, db, tmp)
        return asyncio.run(delivery_run(observed, devices, url, sim_url, ca, tmp))


# -- comparing -----------------------------------------------------------------------------------


def compare(
    name: str, runs: int, measure: Callable[[bool], dict[str, float]], rate: str
) -> dict[str, Any]:
    """Runs both configurations alternately; each figure's runs, medians, and the cost of the
    observed configuration relative to the plain one (positive: slower)."""
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CONFIGURATIONS}
    loads = []
    for configuration in order(runs):
        figures = measure(configuration == "observed")
        loads.append(round(os.getloadavg()[0], 2))
        results[configuration].append(figures)
        print(f"{name} {configuration}: {figures} (load {loads[-1]})", flush=True)
    summary: dict[str, Any] = {"order": order(runs), "load_average_1min_after_each": loads}
    for figure in results["plain"][0]:
        runs_of = {c: [round(r[figure], 1) for r in results[c]] for c in CONFIGURATIONS}
        medians = {c: statistics.median(values) for c, values in runs_of.items()}
        summary[figure] = {"runs": runs_of, "median": medians}
    plain, observed = summary[rate]["median"]["plain"], summary[rate]["median"]["observed"]
    summary["cost_percent"] = round((plain - observed) / plain * 100, 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="of each configuration")
    parser.add_argument("--only", choices=["api", "delivery"])
    parser.add_argument("--sends", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument(
        "--access-log", action="store_true", help="observed API runs log every call as well"
    )
    args = parser.parse_args()

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as name, simulator(Path(name) / "sim", cpu=1) as (url, ca):
        pin(1)  # this process and h2load, beside the simulator; Clarion on CPU 0
        if args.only in (None, "api"):
            figures["transactional_api"] = {
                "database": "sqlite (the embedded default: API and workers in one process)",
                "sends": args.sends,
                "connections": args.connections,
                "observed_with_access_log": args.access_log,
                **compare(
                    "api",
                    args.runs,
                    lambda observed: api_run(
                        observed, args.sends, args.connections, url, ca, access_log=args.access_log
                    ),
                    "accepted_per_s",
                ),
            }
        if args.only in (None, "delivery"):
            figures["delivery_worker"] = {
                "database": args.db,
                "devices": args.devices,
                **compare(
                    "delivery",
                    args.runs,
                    lambda observed: one_delivery(observed, args.devices, args.db, url, ca),
                    "notifications_per_s",
                ),
            }
    report("observability_overhead" + (f"_{args.only}" if args.only else ""), figures)


if __name__ == "__main__":
    main()
