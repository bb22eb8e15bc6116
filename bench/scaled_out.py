"""Scaled out on PostgreSQL (issue 24): the transactional API and a campaign to N installations,
alone and at the same time, with 1 `clarion serve` + 1 `clarion worker`, then 2 + 2.

One database, seeded once and used by both configurations in turn:
- an iOS app with N opted-in installations, the campaign's audience (APNs simulator);
- an Android app with one device, the transactional calls' recipient (FCM simulator): the two
  simulated services count apart, so each side's exactly-once check reads its own counts.

Each configuration starts its processes as a deployment runs them (`clarion serve --no-workers`
on ports of their own, `clarion worker`), then measures, resetting the simulator's counts
between steps once everything is delivered:
1. the transactional API alone for `--seconds`: calls/s, p50 and p99 latency;
2. the campaign alone: created with `push_time` now, targeting everyone; fan-out (creation to
   every batch written), time to last push (creation to the simulator's last accepted push,
   to 100 ms) and notifications/s (N over that time);
3. both at once: the API load starts with the campaign and runs until the campaign is done
   (its last round ends after it).

The load is bench/http_load.py (closed loop, `--connections` keep-alive HTTP/1.1 connections,
32 by default, split evenly over the API processes' ports, one generator process per port), in
rounds of `--round-calls` calls per connection; calls/s is the 201s over the time under load
(each round from its first call to its last answer), latency over every call. Each step's
transactional calls carry a `group_id` of their own, and a short warm-up round (not timed) goes
first in step 1.

Before any rate is printed, for every step: every call answered 201; the tokens answered are
exactly the step's sends in the database; each send has one outcome logged, `push_sent`; the
FCM simulator accepted as many pushes; the campaign reached all N installations once
(check_exactly_once: outcomes logged = pushes the APNs simulator accepted = distinct tokens = N).

Settings, the same in both configurations:
- `CLARION_API_RATE_LIMIT=0` and `CLARION_API_COMPANY_RATE_LIMIT=0`: the defaults (2,000/s per
  key, 5,000/s per company) would cap a single key's calls, and this measures capacity;
- `CLARION_DATABASE_POOL_SIZE` 6 on API processes and 12 on workers (`--api-pool`,
  `--worker-pool`): at the default 32, 2 + 2 processes may open ~180 connections (deploy.md,
  "PostgreSQL"), and this PostgreSQL allows 100, shared with other sessions; 2 + 2 at 6 and 12
  open at most ~60;
- nothing pinned: on a 2-core machine the API processes, workers, PostgreSQL, the simulator and
  the load generator all share both cores, and pinning would decide the result.

Beside the rates, each step reports the CPU seconds of the API processes, the workers and
PostgreSQL's backends, and the share of the machine's cores busy: on a shared machine the rates
move with the neighbours' load, the CPU per call (API) or per push (workers) much less.

The processes' logs and the load generator's files stay in bench/results/scaled_out/. The
single-process configuration runs first, so the scaled-out one finds 2 campaigns' more
events in the (day-partitioned) event table.

    .venv/bin/python -m bench.scaled_out                                  # 1,000,000 installations
    .venv/bin/python -m bench.scaled_out --installations 50000 --seconds 15
    .venv/bin/python -m bench.scaled_out --configurations scaled,single   # 2 + 2 first
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bench.common import (
    OUTCOME_KINDS,
    ROOT,
    Deliveries,
    analyze,
    check_exactly_once,
    control,
    cpu_seconds,
    create_ios_app,
    deliveries,
    outcomes_logged,
    pg_database,
    port_free,
    report,
    serve_clarion,
    settings_env,
    simulated_runtime,
    simulator,
    start_worker,
)
from bench.delivery_recovery import READY_LINE
from bench.sdk_events import backend_pids
from clarion.apps import service as apps
from clarion.apps.schemas import AppCreate, FcmCredentialsIn
from clarion.apps.service import AppAccess, live_access
from clarion.campaigns import service as campaigns
from clarion.campaigns.models import Campaign, CampaignRun, CampaignState, RunState
from clarion.campaigns.schemas import CampaignBody
from clarion.config import Settings
from clarion.db import transaction, utcnow
from clarion.delivery.models import Send
from clarion.demo import seed_installations
from clarion.events.models import PushEvent, PushEventKind
from clarion.runtime import Runtime
from tests.support.simulator import free_port

CONFIGURATIONS = {"single": (1, 1), "scaled": (2, 2)}  # name: (API processes, workers)
TX_RECIPIENT = "tx-0"  # the Android app's one device (seed_installations' custom id)
LIMITS_OFF = {"api_rate_limit": 0.0, "api_company_rate_limit": 0.0}
POLL_S = 0.2
DRAIN_TIMEOUT_S = 3600  # a worker behind the API's intake may take long to catch up
FILES = ROOT / "bench" / "results" / "scaled_out"


@dataclass
class Bench:
    runtime: Runtime
    sim_url: str
    ca: Path
    folder: Path  # the load generator's files, the processes' logs (kept after a failure)
    campaign_app: AppAccess
    tx_app_id: int
    tx_path: str  # /1.1/{api key}/transactional/send
    rest_key: str
    installations: int


@dataclass
class ApiLoad:
    """The transactional calls of one step: what was answered, and how fast."""

    calls: int = 0
    seconds: float = 0.0  # under load: each round from its first call to its last answer
    wall_seconds: float = 0.0  # with the rounds' starts and ends, when fewer calls are in flight
    latencies_ms: list[float] = field(default_factory=list)
    tokens: Counter[str] = field(default_factory=Counter)  # send tokens answered

    def figures(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "calls": self.calls,
            "seconds_under_load": round(self.seconds, 1),
            "seconds_wall": round(self.wall_seconds, 1),
            "calls_per_s": round(self.calls / self.seconds),
            "p50_ms": round(statistics.median(ordered), 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 1),
        }


def body(group: str) -> str:
    return json.dumps(
        {
            "group_id": group,
            "recipients": {"custom_ids": [TX_RECIPIENT]},
            "message": {"title": "Bench", "body": "Your code is 123456"},
        }
    )


def load_round(
    bench: Bench, ports: list[int], group: str, connections: int, calls_each: int
) -> ApiLoad:
    """One round: `calls_each` calls on each connection, the connections split over `ports`,
    one bench/http_load.py process per port; fails unless every call was answered 201."""
    procs = []
    for n, port in enumerate(ports):
        share = connections // len(ports) + (n < connections % len(ports))
        spec = {
            "host": "127.0.0.1",
            "port": port,
            "body": body(group),
            "headers": {"Content-Type": "application/json", "X-Authorization": bench.rest_key},
            "connections": [[bench.tx_path]] * share,
            "calls": [calls_each] * share,
            "timeout": 600,
        }
        spec_file, out = bench.folder / f"load-{port}.json", bench.folder / f"load-{port}-out.json"
        spec_file.write_text(json.dumps(spec))
        out.unlink(missing_ok=True)
        command = [sys.executable, "-m", "bench.http_load", str(spec_file), str(out)]
        procs.append((subprocess.Popen(command), out, share * calls_each))
    result = ApiLoad()
    for proc, out, calls in procs:
        if proc.wait() != 0:
            raise SystemExit(f"the load generator failed ({proc.returncode})")
        answered = json.loads(out.read_text())
        if answered["statuses"] != {"201": calls} or answered["unanswered"]:
            raise SystemExit(
                f"not every call was accepted: {answered['statuses']}, "
                f"{answered['unanswered']} unanswered; {str(answered['answers'])[:500]}"
            )
        result.calls += calls
        result.seconds = max(result.seconds, answered["seconds"])
        result.latencies_ms += answered["latencies_ms"]
        for answer, count in answered["answers"].items():
            result.tokens[json.loads(answer)["token"]] += count
    return result


def api_load(
    bench: Bench,
    ports: list[int],
    group: str,
    args: argparse.Namespace,
    until: Callable[[float], bool],
) -> ApiLoad:
    """Rounds of calls until `until(seconds under load)` holds."""
    total = ApiLoad()
    started = time.monotonic()
    while not until(total.seconds):
        done = load_round(bench, ports, group, args.connections, args.round_calls)
        total.calls += done.calls
        total.seconds += done.seconds
        total.latencies_ms += done.latencies_ms
        total.tokens += done.tokens
    total.wall_seconds = time.monotonic() - started
    return total


@dataclass
class Deployment:
    """One configuration's running processes."""

    ports: list[int]  # the API processes'
    api_pids: list[int]
    worker_pids: list[int]


# API processes', workers', backends' (by pid) CPU seconds; the machine's busy and all ticks.
CpuReading = tuple[float, float, dict[int, float], tuple[int, int]]


class CpuMeter:
    """CPU seconds over a step: the API processes', the workers', PostgreSQL's backends on the
    database (those that ended during the step are left out), and the share of the machine's
    cores busy (its neighbours' work included). On a shared machine the rates move with the
    neighbours' load, the CPU per call or per push much less."""

    def __init__(self, bench: Bench, deployment: Deployment) -> None:
        self.bench, self.deployment = bench, deployment
        self.start: CpuReading = (0.0, 0.0, {}, (0, 0))  # set by begin()

    async def _read(self) -> CpuReading:
        # user nice system idle iowait irq softirq steal (the guest times are inside user)
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [int(f) for f in line.split()[1:9]]
        idle = fields[3] + fields[4]
        backends = {}
        # Through the bench's own pool: PostgreSQL's connections are few and shared.
        for pid in await backend_pids(self.bench.runtime):
            with suppress(OSError):  # ended meanwhile
                backends[pid] = cpu_seconds(pid)
        return (
            sum(cpu_seconds(pid) for pid in self.deployment.api_pids),
            sum(cpu_seconds(pid) for pid in self.deployment.worker_pids),
            backends,
            (sum(fields) - idle, sum(fields)),
        )

    async def begin(self) -> CpuMeter:
        self.start = await self._read()
        return self

    async def used(self) -> dict[str, float]:
        api, workers, backends, machine = await self._read()
        before = self.start
        database = sum(cpu - before[2].get(pid, 0.0) for pid, cpu in backends.items())
        return {
            "api_cpu_s": round(api - before[0], 2),
            "workers_cpu_s": round(workers - before[1], 2),
            "postgres_cpu_s": round(database, 2),
            "machine_busy": round(
                (machine[0] - before[3][0]) / max(1, machine[1] - before[3][1]), 2
            ),
        }


async def prepare(
    runtime: Runtime, key: dict[str, str], sim_url: str, ca: Path, folder: Path, installations: int
) -> Bench:
    started = time.monotonic()
    campaign_app = await create_ios_app(runtime, key)
    await seed_installations(runtime.sessions, app_id=campaign_app.id, count=installations)
    account = httpx.post(f"{sim_url}/_sim/fcm/service-accounts", json={}, verify=str(ca)).json()
    async with transaction(runtime.sessions) as session:
        company, rest_key = await apps.create_company(session, name="Bench transactional")
        tx_app, keys = await apps.create_app(
            session,
            company_id=company.id,
            app_in=AppCreate(name="bench-tx", platform="android"),
            box=runtime.box,
        )
        apps.set_fcm_credentials(tx_app, FcmCredentialsIn(service_account=account), runtime.box)
    await seed_installations(runtime.sessions, app_id=tx_app.id, count=1, custom_id_prefix="tx")
    await analyze(runtime)
    print(
        f"seeded {installations:,} installations in {time.monotonic() - started:.0f} s", flush=True
    )
    return Bench(
        runtime,
        sim_url,
        ca,
        folder,
        live_access(campaign_app),
        tx_app.id,
        f"/1.1/{keys.api_key}/transactional/send",
        rest_key,
        installations,
    )


def reset_simulator(bench: Bench) -> None:
    with control(bench.sim_url, bench.ca) as client:
        client.post("/_sim/reset").raise_for_status()


async def transactional_delivered(bench: Bench, group: str, load: ApiLoad) -> dict[str, Any]:
    """Waits until each of the step's sends has an outcome, then checks that every 201's send
    was delivered exactly once (see the module's docstring); returns the counts and the
    accepted-to-delivered latency."""
    sends_of_group = select(Send.token).where(
        Send.app_id == bench.tx_app_id, Send.group_id == group
    )
    outcomes_per_send = (
        select(PushEvent.send_token, func.count().label("count"))
        .where(
            # By group (its partial index): `send_token IN (the group's sends)` took ~1 min a
            # poll once the table held a few campaigns' events.
            PushEvent.app_id == bench.tx_app_id,
            PushEvent.group_id == group,
            PushEvent.kind.in_([kind.value for kind in OUTCOME_KINDS]),
        )
        .group_by(PushEvent.send_token)
    )
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        async with bench.runtime.sessions() as session:
            sends = set(await session.scalars(sends_of_group))
            rows = await session.execute(outcomes_per_send)
            per_send = Counter({row.send_token: row.count for row in rows})
        if per_send.keys() >= sends or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    logged = await outcomes_logged(
        bench.runtime, PushEvent.app_id == bench.tx_app_id, PushEvent.group_id == group
    )
    fcm = deliveries(bench.sim_url, bench.ca, "fcm")
    counts = {
        "calls_201": load.calls,
        "tokens_answered": len(load.tokens),
        "sends_stored": len(sends),
        "sends_with_one_outcome": sum(1 for n in per_send.values() if n == 1),
        "outcomes_logged": sum(per_send.values()),
        "push_sent_logged": logged[PushEventKind.SENT.value],
        "fcm_simulator_accepted": fcm.accepted,
        "logged_resent": logged["resent"],
    }
    if not (
        set(load.tokens) == sends
        and max(load.tokens.values()) == 1
        and load.calls
        == len(sends)
        == counts["sends_with_one_outcome"]
        == counts["outcomes_logged"]
        == counts["push_sent_logged"]
        == fcm.accepted
    ):
        raise SystemExit(f"{group}: not every 201's send was delivered exactly once: {counts}")
    return counts | await accepted_to_delivered(bench, group)


async def accepted_to_delivered(bench: Bench, group: str) -> dict[str, float]:
    async with bench.runtime.sessions() as session:
        rows = await session.execute(
            select(Send.created_at, PushEvent.occurred_at)
            .join(PushEvent, PushEvent.send_token == Send.token)
            .where(
                Send.app_id == bench.tx_app_id,
                Send.group_id == group,
                PushEvent.kind == PushEventKind.SENT.value,
            )
        )
        lags = sorted((done - created).total_seconds() * 1000 for created, done in rows)
    return {
        "accepted_to_delivered_p50_ms": round(statistics.median(lags), 1),
        "accepted_to_delivered_p99_ms": round(lags[int(len(lags) * 0.99) - 1], 1),
    }


@dataclass
class CampaignProgress:
    campaign_id: int
    token: str
    created_at: float  # unix time (the simulator's clock: same machine)
    fanned_out_at: float | None = None
    completed: threading.Event = field(default_factory=threading.Event)


async def create_campaign(bench: Bench) -> CampaignProgress:
    body = CampaignBody.model_validate(
        {
            "name": "Scaled out",
            "live": True,
            "push_time": "now",
            "targeting": {},
            "messages": [{"language": "en", "title": "Bench", "body": "Campaign"}],
        }
    )
    async with transaction(bench.runtime.sessions) as session:
        campaign = await campaigns.create_campaign(
            session, access=bench.campaign_app, body=body, now=utcnow()
        )
        campaign_id, token = campaign.id, campaign.token
    return CampaignProgress(campaign_id, token, time.time())


async def follow(bench: Bench, progress: CampaignProgress) -> None:
    """Polls the campaign until it is completed, noting when its fan-out ended."""
    while True:
        async with bench.runtime.sessions() as session:
            state = await session.scalar(
                select(Campaign.state).where(Campaign.id == progress.campaign_id)
            )
            run_state = await session.scalar(
                select(CampaignRun.state).where(CampaignRun.campaign_id == progress.campaign_id)
            )
        if progress.fanned_out_at is None and run_state not in (None, RunState.FANNING_OUT):
            progress.fanned_out_at = time.time()
        if state == CampaignState.COMPLETED:
            progress.completed.set()
            return
        if state in (CampaignState.STOPPED, CampaignState.FAILED):
            progress.completed.set()  # ends the API load
            raise SystemExit(f"the campaign ended {state}")
        await asyncio.sleep(POLL_S)


async def campaign_delivered(bench: Bench, progress: CampaignProgress) -> dict[str, Any]:
    """Every installation reached once (check_exactly_once), then the campaign's figures."""
    logged = await outcomes_logged(bench.runtime, PushEvent.campaign_token == progress.token)
    nothing = Deliveries(0, 0, [])  # the simulator's counts were reset before the step
    apns = deliveries(bench.sim_url, bench.ca)
    checked = check_exactly_once("campaign", bench.installations, logged, nothing, apns)
    assert progress.fanned_out_at is not None
    last_push = apns.arrivals[-1][0] + 0.1  # the end of its 100 ms slot
    to_last_push = last_push - progress.created_at
    return {
        "fan_out_s": round(progress.fanned_out_at - progress.created_at, 1),
        "time_to_last_push_s": round(to_last_push, 1),
        "notifications_per_s": round(bench.installations / to_last_push),
        **checked,
    }


async def step_api(
    bench: Bench, deployment: Deployment, name: str, args: argparse.Namespace
) -> dict[str, Any]:
    group = f"{name}-api"
    reset_simulator(bench)
    ports = deployment.ports
    warm_up = await asyncio.to_thread(load_round, bench, ports, group, args.connections, 10)
    meter = await CpuMeter(bench, deployment).begin()
    load = await asyncio.to_thread(
        api_load, bench, ports, group, args, lambda seconds: seconds >= args.seconds
    )
    cpu = await meter.used()
    figures = load.figures() | {
        "api_cpu_ms_per_call": round(cpu["api_cpu_s"] * 1000 / load.calls, 3),
        "cpu": cpu,
    }
    load.calls += warm_up.calls
    load.tokens += warm_up.tokens
    return figures | await transactional_delivered(bench, group, load)


async def step_campaign(bench: Bench, deployment: Deployment) -> dict[str, Any]:
    reset_simulator(bench)
    meter = await CpuMeter(bench, deployment).begin()
    progress = await create_campaign(bench)
    await follow(bench, progress)
    cpu = await meter.used()
    figures = await campaign_delivered(bench, progress)
    per_push = round(cpu["workers_cpu_s"] * 1e6 / bench.installations, 1)
    return figures | {"workers_cpu_us_per_push": per_push, "cpu": cpu}


async def step_together(
    bench: Bench, deployment: Deployment, name: str, args: argparse.Namespace
) -> dict[str, Any]:
    group = f"{name}-together"
    reset_simulator(bench)
    meter = await CpuMeter(bench, deployment).begin()
    progress = await create_campaign(bench)
    loading = asyncio.create_task(
        asyncio.to_thread(
            api_load,
            bench,
            deployment.ports,
            group,
            args,
            lambda _: progress.completed.is_set(),
        )
    )
    await follow(bench, progress)
    load = await loading  # its last round ends after the campaign
    cpu = await meter.used()
    api = load.figures() | await transactional_delivered(bench, group, load)
    campaign = await campaign_delivered(bench, progress)
    return {"api": api, "campaign": campaign, "cpu": cpu}


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL if it is still there 60 s later."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_processes(
    bench: Bench, name: str, args: argparse.Namespace, stack: ExitStack
) -> Deployment:
    """The configuration's `clarion serve` (no workers) and `clarion worker` processes, as a
    deployment runs them, once every one answers and every worker runs."""
    apis, workers = CONFIGURATIONS[name]
    base = bench.runtime.settings.model_dump(exclude_unset=True) | LIMITS_OFF
    base["fcm_url"] = bench.sim_url  # the transactional app's pushes
    api_env = settings_env(Settings(**base, database_pool_size=args.api_pool))
    worker_settings = Settings(**base, database_pool_size=args.worker_pool)
    deployment = Deployment([], [], [])
    for n in range(apis):
        port = free_port()
        port_free(port)
        log = stack.enter_context((bench.folder / f"{name}-serve-{n}.log").open("wb"))
        proc = serve_clarion(port, api_env, workers=False, stderr=log, cpu=None)
        stack.callback(stop, proc)
        httpx.get(f"http://127.0.0.1:{port}/healthz").raise_for_status()
        deployment.ports.append(port)
        deployment.api_pids.append(proc.pid)
    logs = []
    for n in range(workers):
        log_path = bench.folder / f"{name}-worker-{n}.log"
        out = stack.enter_context(log_path.open("wb"))
        proc = start_worker(worker_settings, stdout=out, stderr=subprocess.STDOUT, cpu=None)
        stack.callback(stop, proc)
        logs.append((proc, log_path))
        deployment.worker_pids.append(proc.pid)
    deadline = time.monotonic() + 120
    for proc, log_path in logs:
        while READY_LINE not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"a worker did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(POLL_S)
    return deployment


async def configuration(bench: Bench, name: str, args: argparse.Namespace) -> dict[str, Any]:
    apis, workers = CONFIGURATIONS[name]
    print(f"== {apis} API + {workers} worker(s), load {os.getloadavg()[0]:.2f}", flush=True)
    with ExitStack() as stack:
        deployment = start_processes(bench, name, args, stack)
        figures: dict[str, Any] = {"api_processes": apis, "workers": workers}
        figures["api_alone"] = await step_api(bench, deployment, name, args)
        print(f"  API alone: {figures['api_alone']}", flush=True)
        figures["campaign_alone"] = await step_campaign(bench, deployment)
        print(f"  campaign alone: {figures['campaign_alone']}", flush=True)
        figures["together"] = await step_together(bench, deployment, name, args)
        print(f"  together: {figures['together']}", flush=True)
    figures["load_average_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return figures


# Each row: its label, and the figures it shows (paths in a configuration's results, " / " apart).
ROWS = [
    ("API alone: calls/s", "api_alone.calls_per_s"),
    ("API alone: p50 / p99 ms", "api_alone.p50_ms api_alone.p99_ms"),
    ("API alone: accepted→delivered p50 ms", "api_alone.accepted_to_delivered_p50_ms"),
    ("API alone: API processes' CPU ms per call", "api_alone.api_cpu_ms_per_call"),
    ("campaign alone: fan-out s", "campaign_alone.fan_out_s"),
    ("campaign alone: time to last push s", "campaign_alone.time_to_last_push_s"),
    ("campaign alone: notifications/s", "campaign_alone.notifications_per_s"),
    ("campaign alone: workers' CPU µs per push", "campaign_alone.workers_cpu_us_per_push"),
    ("together: API calls/s", "together.api.calls_per_s"),
    ("together: API p50 / p99 ms", "together.api.p50_ms together.api.p99_ms"),
    ("together: API accepted→delivered p50 ms", "together.api.accepted_to_delivered_p50_ms"),
    ("together: campaign fan-out s", "together.campaign.fan_out_s"),
    ("together: campaign time to last push s", "together.campaign.time_to_last_push_s"),
    ("together: campaign notifications/s", "together.campaign.notifications_per_s"),
    (
        "cores busy: API alone / campaign alone / together",
        "api_alone.cpu.machine_busy campaign_alone.cpu.machine_busy together.cpu.machine_busy",
    ),
]


def table(results: dict[str, dict[str, Any]]) -> str:
    def cell(configuration: dict[str, Any] | None, paths: str) -> str:
        if configuration is None:
            return "not run"
        shown = []
        for path in paths.split():
            found: Any = configuration
            for part in path.split("."):
                found = found[part]
            shown.append(f"{found:,}")
        return " / ".join(shown)

    lines = ["| figure | single process (1 API + 1 worker) | 2 API + 2 workers |", "|---|---|---|"]
    for label, paths in ROWS:
        lines.append(
            f"| {label} | {cell(results.get('single'), paths)}"
            f" | {cell(results.get('scaled'), paths)} |"
        )
    return "\n".join(lines)


async def measure(args: argparse.Namespace, stack: ExitStack, folder: Path) -> dict[str, Any]:
    sim_url, ca = stack.enter_context(simulator(folder / "sim", cpu=None))
    database_url = stack.enter_context(pg_database())
    runtime, key = await simulated_runtime(database_url, sim_url, ca, folder)
    try:
        shutil.rmtree(FILES, ignore_errors=True)  # the last run's
        FILES.mkdir(parents=True)
        bench = await prepare(runtime, key, sim_url, ca, FILES, args.installations)
        results = {}
        for name in args.configurations.split(","):
            results[name] = await configuration(bench, name, args)
            (FILES / "partial.json").write_text(json.dumps(results, indent=2))  # a long run's
    finally:
        await runtime.engine.dispose()
    print(table(results))
    return {
        "installations": args.installations,
        "api_seconds_alone": args.seconds,
        "connections": args.connections,
        "settings": {
            "CLARION_API_RATE_LIMIT": 0,
            "CLARION_API_COMPANY_RATE_LIMIT": 0,
            "CLARION_DATABASE_POOL_SIZE": {"api": args.api_pool, "worker": args.worker_pool},
        },
        **results,
        "table": table(results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--installations", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60, help="the API load alone")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--round-calls", type=int, default=100, help="per connection")
    parser.add_argument("--api-pool", type=int, default=6)
    parser.add_argument("--worker-pool", type=int, default=12)
    parser.add_argument(
        "--configurations",
        default=",".join(CONFIGURATIONS),
        help="which to run, in this order (single, scaled)",
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        figures = asyncio.run(measure(args, stack, folder))
    report(f"scaled_out_{args.installations}", figures)


if __name__ == "__main__":
    main()
