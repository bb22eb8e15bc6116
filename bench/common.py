"""Shared pieces of the benchmarks: the simulator, cores, memory, h2load, fresh databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from cryptography.fernet import Fernet
from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps import service as apps
from clarion.apps.models import App
from clarion.apps.schemas import AppCreate
from clarion.config import Settings
from clarion.db import transaction
from clarion.delivery.models import BatchStatus, DeliveryBatch
from clarion.demo import apns_credentials_from_sim
from clarion.events.models import PushEvent, PushEventKind
from clarion.migrate import migrate
from clarion.runtime import Runtime
from clarion.security import SecretBox
from tests.support.simulator import LOCAL_SERVERS_ALLOW, free_port

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("CLARION_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# A free port unless one is asked for: two simulators on one port (SO_REUSEPORT) share the
# connections, and each counts only half of a run's pushes.
SIM_PORT = int(os.environ.get("CLARION_BENCH_SIM_PORT") or free_port())
TOPIC = "com.example.bench"


async def simulated_runtime(
    database_url: str, sim_url: str, ca: Path, var: Path
) -> tuple[Runtime, dict[str, str]]:
    """A Clarion runtime on a freshly migrated database, its providers pointed at the
    simulator, and an APNs signing key the simulator trusts (not started)."""
    settings = Settings(
        database_url=database_url,
        var_dir=var,
        secret_key=Fernet.generate_key().decode(),
        apns_production_url=sim_url,
        apns_sandbox_url=sim_url,
        provider_ca_file=str(ca),
        outbound_allow=LOCAL_SERVERS_ALLOW,  # the simulator is on 127.0.0.1 (an FCM token_uri)
    )
    await asyncio.to_thread(migrate, settings)  # on PostgreSQL it runs its own event loop
    key = httpx.post(f"{sim_url}/_sim/apns/keys", json={"topics": [TOPIC]}, verify=str(ca)).json()
    return Runtime(settings), key


async def create_bench_app(session: AsyncSession, box: SecretBox, platform: str) -> App:
    """A company with one app (keys unused: the benchmarks call services or the CLI)."""
    company, _ = await apps.create_company(session, name="Bench")
    app, _keys = await apps.create_app(
        session, company_id=company.id, app_in=AppCreate(name="bench", platform=platform), box=box
    )
    return app


async def create_ios_app(runtime: Runtime, key: dict[str, str]) -> App:
    """A company with one iOS app whose APNs credentials are the simulator's key."""
    async with transaction(runtime.sessions) as session:
        app = await create_bench_app(session, runtime.box, "ios")
        apps.set_apns_credentials(app, apns_credentials_from_sim(key, TOPIC), runtime.box)
    return app


def rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    line = next(ln for ln in status.splitlines() if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def cpu_seconds(pid: int | None = None) -> float:
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(cpu: int, pid: int | None = None) -> None:
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(pid or 0, {cpu})


@contextmanager
def simulator(state_dir: Path, *, cpu: int | None = 1) -> Iterator[tuple[str, Path]]:
    """The simulators in their own process (pinned to `cpu`); yields (base_url, ca_file)."""
    # Pinned from the start with taskset: sched_setaffinity on a running process moves only its
    # main thread, and granian's I/O threads left floating cut the simulator's throughput by 60%.
    pinning = ["taskset", "-c", str(cpu)] if cpu is not None and (os.cpu_count() or 1) > 1 else []
    proc = subprocess.Popen(
        [
            *pinning,
            sys.executable,
            "-m",
            "clarion.sim",
            "--port",
            str(SIM_PORT),
            "--state-dir",
            str(state_dir),
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"https://127.0.0.1:{SIM_PORT}"
    ca = state_dir / "ca.pem"
    deadline = time.monotonic() + 30
    while not (ca.exists() and _ready(base_url, ca)):
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited (port {SIM_PORT} taken?)")
        if time.monotonic() > deadline:
            # The whole group: granian's worker would otherwise keep the port (SO_REUSEPORT
            # lets a later simulator bind beside it and share the connections).
            os.killpg(proc.pid, 9)
            raise RuntimeError("the simulator did not start")
        time.sleep(0.2)
    try:
        yield base_url, ca
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def port_free(port: int) -> None:
    """Before starting a server: another run's server on the port would answer for ours, with
    other keys."""
    try:
        httpx.get(f"http://127.0.0.1:{port}", timeout=1)
    except httpx.TransportError:
        return
    raise SystemExit(f"port {port} is taken (CLARION_BENCH_API_PORT chooses another)")


def serve_clarion(
    port: int,
    env: dict[str, str],
    *,
    workers: bool,
    stderr: Any = subprocess.DEVNULL,
    cpu: int | None = 0,
) -> subprocess.Popen[bytes]:
    """`clarion serve` in its own process group, pinned to `cpu` once it answers (None: not
    pinned, for benchmarks that let several processes share the cores)."""
    proc = subprocess.Popen(
        [
            *[sys.executable, "-m", "clarion.cli", "serve", "--port", str(port)],
            "--workers" if workers else "--no-workers",
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/docs")
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    if cpu is not None:
        pin(cpu, proc.pid)
    return proc


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a `clarion` process these settings (lists as JSON)."""
    env = {}
    for field, value in settings.model_dump(exclude_unset=True).items():
        if isinstance(value, list):
            env[f"CLARION_{field.upper()}"] = json.dumps([str(item) for item in value])
        elif value is not None:
            env[f"CLARION_{field.upper()}"] = str(value)
    return env


def start_worker(
    settings: Settings,
    *,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = None,
    cpu: int | None = 0,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`clarion worker` as a deployment runs it: its own process (and process group, so that a
    signal reaches all of it), its settings from the environment (and `env`), pinned to `cpu`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "clarion.cli", "worker"],
        env={**os.environ, **settings_env(settings), **(env or {})},
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )
    if cpu is not None:
        pin(cpu, proc.pid)
    return proc


def _process_tree(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    children = [int(p) for p in out.stdout.split()]
    return [pid, *[c for child in children for c in _process_tree(child)]]


def h2load(args: list[str]) -> dict[str, Any]:
    """Runs h2load (installing nghttp2-client when missing); returns req/s and the raw text."""
    if shutil.which("h2load") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"], check=True)
    out = subprocess.run(["h2load", *args], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("finished in"))
    req_s = float(line.split(",")[1].split()[0])
    took = line.split(",")[0].removeprefix("finished in").strip()  # "1.23s", "523.35ms"
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    unit = next(u for u in units if took.endswith(u) and took[: -len(u)][-1:].isdigit())
    seconds = float(took[: -len(unit)]) * units[unit]
    return {"req_per_s": req_s, "seconds": seconds, "output": out}


@contextmanager
def pg_database() -> Iterator[str]:
    name = f"clarion_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backends_cpu(database_url: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to the database (its server's
    connection pool): PostgreSQL runs on this machine, its processes readable in /proc."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        pids = [
            row[0]
            for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
        ]
    found = {}
    for pid in pids:
        try:
            found[pid] = cpu_seconds(pid)
        except OSError:  # gone meanwhile
            continue
    return found


async def analyze(runtime: Runtime) -> None:
    """VACUUM ANALYZE after seeding (PostgreSQL): plans as a long-running database has them."""
    if runtime.engine.dialect.name == "postgresql":
        autocommit = runtime.engine.execution_options(isolation_level="AUTOCOMMIT")
        async with autocommit.connect() as connection:
            await connection.execute(text("VACUUM ANALYZE"))


@dataclass
class MeasuredCommand:
    seconds: float
    rss_samples_mb: list[float]
    last_line: dict[str, Any]  # the command's last line of output, as JSON


def run_measured(command: list[str], env: dict[str, str], every: float = 0.2) -> MeasuredCommand:
    """Run a `clarion` command in its own process, sampling its RSS; fails if it fails."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.DEVNULL)
        samples = []
        while process.poll() is None:
            with contextlib.suppress(OSError, StopIteration):  # it may just have ended
                samples.append(rss_mb(process.pid))
            time.sleep(every)
        seconds = time.monotonic() - started
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command[1:3])} failed ({process.returncode})")
        out.seek(0)
        last_line = json.loads(out.read().strip().splitlines()[-1])
    return MeasuredCommand(seconds, samples, last_line)


def rss_summary(samples: list[float]) -> dict[str, Any]:
    """A process's RSS over a run (MB): start, max, end, and about 20 samples in between."""
    return {
        "start": round(samples[0]),
        "max": round(max(samples)),
        "end": round(samples[-1]),
        "samples": [round(r) for r in samples[:: max(1, len(samples) // 20)]],
    }


@dataclass(frozen=True)
class Deliveries:
    """What the simulator accepted so far (GET /_sim/{service}/deliveries)."""

    tokens: int  # distinct tokens that accepted a push
    repeated: int  # pushes to a token that had already accepted one
    arrivals: list[tuple[float, int]]  # (unix time of a 100 ms slot, pushes accepted in it)

    @property
    def accepted(self) -> int:
        return self.tokens + self.repeated


def deliveries(sim_url: str, ca: Path, service: str = "apns") -> Deliveries:
    document = httpx.get(f"{sim_url}/_sim/{service}/deliveries", verify=str(ca), timeout=60)
    document.raise_for_status()
    body = document.json()
    arrivals = [(float(at), int(count)) for at, count in body["arrivals"]]
    return Deliveries(body["tokens"], body["repeated"], arrivals)


# The outcomes a delivery logs, one per recipient and attempt that reached an answer.
OUTCOME_KINDS = (PushEventKind.SENT, PushEventKind.ERROR, PushEventKind.TOKEN_DELETED)


async def outcomes_logged(runtime: Runtime, *where: ColumnElement[bool]) -> dict[str, int]:
    """push_events by outcome kind (and how many are marked re-sent), filtered by `where`."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(PushEvent.kind, PushEvent.resent, func.count())
            .where(PushEvent.kind.in_([k.value for k in OUTCOME_KINDS]), *where)
            .group_by(PushEvent.kind, PushEvent.resent)
        )
        counts = {kind.value: 0 for kind in OUTCOME_KINDS} | {"resent": 0}
        for kind, resent, count in rows:
            counts[kind] += count
            if resent:
                counts["resent"] += count
    return counts


async def batches_left(runtime: Runtime) -> int:
    """Delivery batches not done yet."""
    async with runtime.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(DeliveryBatch)
            .where(DeliveryBatch.status != BatchStatus.DONE.value)
        )
    return int(count or 0)


async def until_every_batch_is_done(
    runtime: Runtime, *, every: float, each: Callable[[], None] | None = None
) -> None:
    """Polls (every `every` seconds, calling `each` first) until no delivery batch is left to
    send."""
    while True:
        await asyncio.sleep(every)
        if each is not None:
            each()
        if not await batches_left(runtime):
            return


def check_exactly_once(
    name: str, recipients: int, logged: dict[str, int], before: Deliveries, after: Deliveries
) -> dict[str, int]:
    """Before any rate is printed: every recipient's outcome logged once, the simulator accepted
    one push per recipient, and no token got two. Otherwise the benchmark fails (exit 1) with
    every count, since a rate over lost or doubled pushes measures nothing.

    `before` and `after` are the simulator's counts around the measured run; tokens must be
    distinct per recipient (a benchmark pushing one token many times checks its own way)."""
    outcomes = sum(logged[kind.value] for kind in OUTCOME_KINDS)
    counts = {
        "recipients": recipients,
        "outcomes_logged": outcomes,
        "simulator_accepted": after.accepted - before.accepted,
        "simulator_tokens": after.tokens - before.tokens,
        "sent_twice": after.repeated - before.repeated,
        "logged_resent": logged["resent"],
    }
    if not (
        outcomes == counts["simulator_accepted"] == counts["simulator_tokens"] == recipients
        and counts["sent_twice"] == 0
    ):
        raise SystemExit(f"{name}: not every recipient reached exactly once: {counts}")
    return counts


def fresh_database(stack: ExitStack, db: str, tmp: Path) -> str:
    """The URL of a new, empty database of the kind asked for, dropped when `stack` closes."""
    if db == "postgres":
        return stack.enter_context(pg_database())
    return f"sqlite:///{tmp / 'bench.db'}"


def report(name: str, figures: dict[str, Any]) -> None:
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({name: figures}, indent=2))


def _ready(base_url: str, ca: Path) -> bool:
    try:
        with control(base_url, ca) as client:
            return client.get("/_sim/stats").status_code == 200
    except httpx.HTTPError:
        return False


def control(base_url: str, ca: Path) -> httpx.Client:
    """A client for the simulators' control API (HTTP/2, trusting their CA)."""
    return httpx.Client(base_url=base_url, http2=True, verify=str(ca))
