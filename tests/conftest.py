"""Shared fixtures: a Clarion per database backend (SQLite file, PostgreSQL database), each
migrated by the real Alembic migrations and wired to the real simulators over TLS."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
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


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    with running_simulator(tmp_path_factory.mktemp("sim")) as handle:
        yield handle


@pytest.fixture(scope="session")
def sim_control(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with sim.control_client() as client:
        yield client


def _create_pg_database() -> str:
    name = f"clarion_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        _drop_pg_database(name)


@pytest.fixture(scope="session")
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with empty_database(backend, tmp_path_factory.mktemp("db")) as url:
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
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def settings(
    database_url: str, sim: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    settings = make_settings(database_url, tmp_path_factory.mktemp("var"), sim)
    migrate(settings)
    return settings


@pytest.fixture(scope="session")
async def clarion_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings, workers=True)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture(scope="session")
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
