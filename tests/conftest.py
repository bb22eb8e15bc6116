"""Shared fixtures: a Clarion per test module and database backend (SQLite file, PostgreSQL
database), each on its own database copied from one migrated by the real Alembic migrations
once per session, and wired to the real simulators over TLS."""

from __future__ import annotations

import itertools
import os
import secrets
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI

from clarion.app import create_app
from clarion.apps import service as apps_service
from clarion.apps.schemas import AppCreate, FcmCredentialsIn
from clarion.config import QueueBackend, Settings
from clarion.db import transaction
from clarion.demo import apns_credentials_from_sim
from clarion.migrate import migrate
from clarion.queue import JobQueue
from clarion.runtime import Runtime
from tests.support.simulator import LOCAL_SERVERS_ALLOW, SimulatorHandle, running_simulator

# Local S3 / SFTP / FTP / FTPS / HTTPS servers for the flat-file connector tests.
pytest_plugins = ["tests.support.storage_servers"]

PG_ADMIN_URL = os.environ.get("CLARION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TOPIC = "com.example.tests"


# Seconds spent per module on its own database and Clarion, by step: printed at the end, the
# price of the isolation (decision 0033).
ISOLATION_SECONDS: dict[str, list[float]] = defaultdict(list)


@contextmanager
def timed(step: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        ISOLATION_SECONDS[step].append(time.perf_counter() - started)


_COLLECTED = pytest.StashKey[int]()
_collected = itertools.count()


def pytest_itemcollected(item: pytest.Item) -> None:
    item.stash[_COLLECTED] = next(_collected)  # called in file order, before any shuffle


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `in_order` (each continues the one before: tests/test_readme.py pastes the
    README's blocks into one terminal) keep their file order in a shuffled run, in the places
    the shuffle gave them."""
    by_module: dict[str, list[int]] = defaultdict(list)
    for position, item in enumerate(items):
        if item.get_closest_marker("in_order") is not None:
            by_module[item.nodeid.split("::")[0]].append(position)
    for positions in by_module.values():
        ordered = sorted((items[p] for p in positions), key=lambda item: item.stash[_COLLECTED])
        for position, item in zip(positions, ordered, strict=True):
            items[position] = item


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """A shuffled run's seed at the end, beside its result (`-q` hides the header), and what
    the modules' own databases and Clarions cost."""
    if ISOLATION_SECONDS:
        terminalreporter.write_line(
            "per-module databases and Clarions: "
            + ", ".join(
                f"{step} {len(times)} x {sum(times) / len(times):.2f} s = {sum(times):.0f} s"
                for step, times in ISOLATION_SECONDS.items()
            )
        )
    if config.pluginmanager.hasplugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(
            f"shuffled: the same order again with -p randomly --randomly-seed={seed}"
        )


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    with running_simulator(tmp_path_factory.mktemp("sim")) as handle:
        yield handle


@pytest.fixture(scope="session")
def sim_control(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with sim.control_client() as client:
        yield client


def _create_pg_database(template: str | None = None) -> str:
    """A new database `clarion_test_*`: empty, or a copy of `template`."""
    name = f"clarion_test_{secrets.token_hex(4)}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    return name


def _drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def empty_database(backend: str, folder: Path) -> Iterator[str]:
    """The URL of a new, empty database: a SQLite file in `folder`, or a PostgreSQL database
    dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'clarion.db'}"
        return
    name = _create_pg_database()
    try:
        yield _pg_url(name)
    finally:
        _drop_pg_database(name)


class Templates:
    """One database per backend migrated once per test session; each test module gets a copy
    (cloned_database), so that the workers' global queries (sweeps, folds, schedulers) see
    that module's rows only and modules pass in any order. Migrating takes seconds; a copy
    a fraction of one (figures in docs/decisions/0033-test-isolation.md)."""

    def __init__(self, folder: Path, sim: SimulatorHandle) -> None:
        self._folder = folder
        self._sim = sim
        self._made: dict[str, str] = {}  # backend -> SQLite file path or PostgreSQL name

    def source(self, backend: str) -> str:
        if backend not in self._made:
            self._made[backend] = self._migrate(backend)
        return self._made[backend]

    def _migrate(self, backend: str) -> str:
        folder = self._folder / backend
        folder.mkdir()
        if backend == "sqlite":
            path = folder / "template.db"
            migrate(make_settings(f"sqlite:///{path}", folder, self._sim))
            return str(path)
        name = _create_pg_database()
        self._made[backend] = name  # dropped at the end even if the migration fails
        migrate(make_settings(_pg_url(name), folder, self._sim))
        # A template (so that CREATE DATABASE ... TEMPLATE needs no superuser) nobody can
        # connect to: a connection to it would make every copy fail ("source database is
        # being accessed by other users").
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        return name

    def drop(self) -> None:
        name = self._made.pop("postgres", None)
        if name is not None:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false')
            _drop_pg_database(name)


@pytest.fixture(scope="session")
def templates(
    sim: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Templates]:
    made = Templates(tmp_path_factory.mktemp("templates"), sim)
    yield made
    made.drop()


@contextmanager
def cloned_database(backend: str, templates: Templates, folder: Path) -> Iterator[str]:
    """The URL of a new database holding the migrated schema: a copy of the session's
    template (a SQLite file in `folder`, or a PostgreSQL database dropped afterwards)."""
    source = templates.source(backend)
    if backend == "sqlite":
        path = folder / "clarion.db"
        # The backup API rather than a file copy: it copies a consistent database whatever
        # the journal (WAL) holds.
        with (
            timed(f"{backend} copy"),
            closing(sqlite3.connect(source)) as origin,
            closing(sqlite3.connect(path)) as copy,
        ):
            origin.backup(copy)
        yield f"sqlite:///{path}"
        return
    with timed(f"{backend} copy"):
        name = _create_pg_database(template=source)
    try:
        yield _pg_url(name)
    finally:
        with timed(f"{backend} drop"):
            _drop_pg_database(name)


@pytest.fixture(scope="module")
def database_url(
    backend: str, templates: Templates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The module's own database, migrated (a copy of the session's template)."""
    with cloned_database(backend, templates, tmp_path_factory.mktemp("db")) as url:
        yield url


def make_settings(
    database_url: str, var_dir: Path, sim: SimulatorHandle, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "var_dir": var_dir,
        "secret_key": Fernet.generate_key().decode(),
        "apns_production_url": sim.base_url,
        "apns_sandbox_url": sim.base_url,
        "fcm_url": sim.base_url,
        "provider_ca_file": str(sim.ca_file),
        # Fast retries so that retry scenarios finish within a test.
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.5,
        "retry_max_attempts": 6,
        "sweep_interval_seconds": 1.0,
        # Campaign tests drive their own schedulers, with a clock they control.
        "scheduler_interval_seconds": 3600.0,
        # Automation tests drive their own dispatchers, with a clock they control.
        "automation_poll_seconds": 3600.0,
        # Import and export tests poll their sources and destinations themselves.
        "import_check_seconds": 3600.0,
        "export_check_seconds": 3600.0,
        # Statistics tests fold counts and store finished days themselves.
        "stats_interval_seconds": 3600.0,
        # The simulators and storage servers listen on 127.0.0.1, refused by default by the
        # outbound policy: allowed explicitly. test_gdpr's callback server speaks plain HTTP.
        "outbound_allow": LOCAL_SERVERS_ALLOW,
        "outbound_allow_http": True,
        # A task opening a session while it holds one fails at once on both backends, as it
        # always does on SQLite (decision 0033).
        "check_nested_sessions": True,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def settings(
    database_url: str, sim: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The module's Clarion settings, on the module's database (already migrated)."""
    return make_settings(database_url, tmp_path_factory.mktemp("var"), sim)


@pytest.fixture(scope="module")
async def clarion_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The module's Clarion, workers included, started on the module's database."""
    app = create_app(settings, workers=True)
    backend = "sqlite" if settings.is_sqlite else "postgres"
    started = time.perf_counter()
    async with app.router.lifespan_context(app):
        ISOLATION_SECONDS[f"{backend} start"].append(time.perf_counter() - started)
        yield app
        started = time.perf_counter()
    ISOLATION_SECONDS[f"{backend} stop"].append(time.perf_counter() - started)


@pytest.fixture(scope="module")
def runtime(clarion_app: FastAPI) -> Runtime:
    runtime: Runtime = clarion_app.state.runtime
    return runtime


@pytest.fixture
async def api(clarion_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=clarion_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as client:
        yield client


@dataclass
class ClientApp:
    """An app of a fresh company: its id, keys, and (when wired) the simulator's credentials."""

    app_id: int
    platform: str
    api_key: str
    dev_api_key: str
    rest_key: str

    def headers(self) -> dict[str, str]:
        return {"X-Authorization": self.rest_key}


async def new_app(
    runtime: Runtime,
    sim_control: httpx.Client | None,
    platform: str,
    *,
    topics: list[str] | None = None,
    configure: bool = True,
) -> ClientApp:
    """A company with one app; `configure` wires it to the simulator's credentials."""
    async with transaction(runtime.sessions) as session:
        company, rest_key = await apps_service.create_company(session, name="Test Co")
        app, keys = await apps_service.create_app(
            session,
            company_id=company.id,
            app_in=AppCreate(name=f"test {platform}", platform=platform),
            box=runtime.box,
        )
        if configure and sim_control is not None and platform == "ios":
            key = sim_control.post("/_sim/apns/keys", json={"topics": topics or [TOPIC]}).json()
            apps_service.set_apns_credentials(
                app, apns_credentials_from_sim(key, TOPIC), runtime.box
            )
        if configure and sim_control is not None and platform == "android":
            account = sim_control.post("/_sim/fcm/service-accounts", json={}).json()
            apps_service.set_fcm_credentials(
                app, FcmCredentialsIn(service_account=account), runtime.box
            )
    return ClientApp(app.id, platform, keys.api_key, keys.dev_api_key, rest_key)


@pytest.fixture
async def held_queue() -> AsyncIterator[JobQueue]:
    """A queue nobody works: batches written by a campaign fan-out stay pending."""
    queue = JobQueue(QueueBackend.MEMORY, "")
    await queue.start()
    yield queue
    await queue.aclose()


@pytest.fixture
async def ios_app(runtime: Runtime, sim_control: httpx.Client) -> ClientApp:
    return await new_app(runtime, sim_control, "ios")


@pytest.fixture
async def android_app(runtime: Runtime, sim_control: httpx.Client) -> ClientApp:
    return await new_app(runtime, sim_control, "android")


@pytest.fixture
async def web_app(runtime: Runtime, sim_control: httpx.Client) -> ClientApp:
    return await new_app(runtime, sim_control, "web")
