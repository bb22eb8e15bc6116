"""/healthz and /readyz (clarion.probes) on a real app: ready when the database answers with
every migration, not ready when a background loop stopped beating (its clock moved, not
waited for) or when the database is a migration behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from alembic import command

from clarion.app import create_app
from clarion.config import Settings
from clarion.health import bound
from clarion.migrate import alembic_config, migrate
from clarion.probes import SCHEMA_CACHE_SECONDS
from tests.conftest import empty_database, make_settings
from tests.support.clock import Clock
from tests.support.simulator import SimulatorHandle

READY = {"status": "ok", "checks": {"database": "ok", "migrations": "ok", "loops": "ok"}}


@asynccontextmanager
async def serving(
    settings: Settings, clock: Clock, *, workers: bool
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, workers=workers, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as api:
            yield api


def clock() -> Clock:
    return Clock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))


@asynccontextmanager
async def migrated(backend: str, sim: SimulatorHandle, folder: Path) -> AsyncIterator[Settings]:
    """The settings of a new database of `backend`, migrated to the head."""
    with empty_database(backend, folder) as url:
        settings = make_settings(url, folder / "var", sim)
        await asyncio.to_thread(migrate, settings)
        yield settings


async def test_ready_until_a_loop_stops_beating(
    backend: str, sim: SimulatorHandle, tmp_path: Path
) -> None:
    async with migrated(backend, sim, tmp_path) as settings:
        time = clock()
        async with serving(settings, time, workers=True) as api:
            alive = await api.get("/healthz")
            assert alive.status_code == 200, alive.text
            ready = await api.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json() == READY
            # The test settings run the campaign scheduler every hour: its last beat is now
            # older than its bound (the outbox sweep, every second, may beat again meanwhile).
            time.advance(timedelta(seconds=bound(settings.scheduler_interval_seconds) + 1))
            stale = await api.get("/readyz")
            assert stale.status_code == 503, stale.text
            checks = stale.json()["checks"]
            assert stale.json()["status"] == "unavailable"
            assert checks["database"] == "ok"
            assert checks["migrations"] == "ok"
            assert checks["loops"].startswith("stale: ")
            assert "campaign scheduler" in checks["loops"]
            assert "automation dispatcher" in checks["loops"]
            # Alive all the same: /healthz checks nothing.
            assert (await api.get("/healthz")).status_code == 200


async def test_not_ready_a_migration_behind(
    backend: str, sim: SimulatorHandle, tmp_path: Path
) -> None:
    async with migrated(backend, sim, tmp_path) as settings:
        config = alembic_config(settings.resolved_database_url)
        await asyncio.to_thread(command.downgrade, config, "-1")
        time = clock()
        async with serving(settings, time, workers=False) as api:
            behind = await api.get("/readyz")
            assert behind.status_code == 503, behind.text
            assert behind.json()["checks"] == {
                "database": "ok",
                "migrations": "behind",
                "loops": "ok",
            }
            await asyncio.to_thread(command.upgrade, config, "head")
            # The schema is read at most every SCHEMA_CACHE_SECONDS: still the last answer
            # (the database itself is asked each time).
            cached = await api.get("/readyz")
            assert cached.status_code == 503, cached.text
            assert cached.json()["checks"] == behind.json()["checks"]
            time.advance(timedelta(seconds=SCHEMA_CACHE_SECONDS))
            ready = await api.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json() == READY


async def test_not_ready_before_any_migration(
    backend: str, sim: SimulatorHandle, tmp_path: Path
) -> None:
    if backend != "sqlite":
        pytest.skip("the queue needs its schema on PostgreSQL to start; the check is the same")
    with empty_database(backend, tmp_path) as url:
        settings = make_settings(url, tmp_path / "var", sim)
        async with serving(settings, clock(), workers=False) as api:
            empty = await api.get("/readyz")
            assert empty.status_code == 503, empty.text
            assert empty.json()["checks"]["migrations"] == "not migrated"
