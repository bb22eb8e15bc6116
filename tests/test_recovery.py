"""Scaled out on PostgreSQL: a `clarion worker` killed with SIGKILL mid-send loses no send.

The API runs here (no workers); the workers are real `clarion worker` processes sharing the
database and the pgqueuer queue. The first is killed while it delivers; a second one finishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from clarion.app import create_app
from clarion.config import Settings
from clarion.delivery.models import BatchStatus, DeliveryBatch
from clarion.demo import seed_installations
from clarion.events.models import PushEvent
from clarion.migrate import migrate
from clarion.runtime import Runtime
from tests.conftest import (
    ClientApp,
    _create_pg_database,
    _drop_pg_database,
    make_settings,
    new_app,
)
from tests.support.simulator import SimulatorHandle

DEVICES = 3000
BATCH = 250


@pytest.fixture
def pg_settings(sim: SimulatorHandle, tmp_path: Path) -> Iterator[Settings]:
    name = _create_pg_database()
    try:
        settings = make_settings(
            f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
            tmp_path,
            sim,
            batch_size=BATCH,
            delivery_lease_seconds=3.0,
            job_heartbeat_seconds=3.0,
            sweep_interval_seconds=1.0,
            worker_concurrency=1,
        )
        migrate(settings)
        yield settings
    finally:
        _drop_pg_database(name)


@pytest.fixture
async def api_only(pg_settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(pg_settings, workers=False)
    async with app.router.lifespan_context(app):
        yield app


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for field, value in settings.model_dump().items():
        if isinstance(value, list):  # list settings are read as JSON
            env[f"CLARION_{field.upper()}"] = json.dumps([str(item) for item in value])
        elif value is not None:
            env[f"CLARION_{field.upper()}"] = str(value)
    return subprocess.Popen(
        [sys.executable, "-m", "clarion.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


async def send_to_all(api_only: FastAPI, app: ClientApp, prefix: str, devices: int) -> None:
    """One transactional send to the custom ids prefix-0 .. prefix-(devices - 1)."""
    transport = httpx.ASGITransport(app=api_only)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        response = await api.post(
            f"/1.1/{app.api_key}/transactional/send",
            headers=app.headers(),
            json={
                "group_id": "recovery",
                "recipients": {"custom_ids": [f"{prefix}-{n}" for n in range(devices)]},
                "message": {"body": "survive"},
            },
        )
    assert response.status_code == 201


async def count_sent(runtime: Runtime) -> int:
    async with runtime.sessions() as session:
        return (
            await session.scalar(
                select(func.count()).select_from(PushEvent).where(PushEvent.kind == "push_sent")
            )
        ) or 0


@pytest.mark.postgres
async def test_kill_9_mid_send_loses_nothing(api_only: FastAPI, sim_control: httpx.Client) -> None:
    runtime: Runtime = api_only.state.runtime
    app = await new_app(runtime, sim_control, "ios")
    await seed_installations(
        runtime.sessions, app_id=app.app_id, count=DEVICES, custom_id_prefix="k"
    )
    accepted_before = sim_control.get("/_sim/stats").json()["apns"]["accepted"]

    # Slow the simulated APNs so that the first worker is mid-send when it is killed.
    sim_control.put("/_sim/apns/faults", json={"rates": {}, "delay_ms": 20})
    first = start_worker(runtime.settings)
    try:
        await send_to_all(api_only, app, "k", DEVICES)

        deadline = time.monotonic() + 30
        while await count_sent(runtime) < BATCH and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        sent_at_kill = await count_sent(runtime)
        assert BATCH <= sent_at_kill < DEVICES, "the worker was not killed mid-send"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    sim_control.put("/_sim/apns/faults", json={"rates": {}, "delay_ms": 0})

    second = start_worker(runtime.settings)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with runtime.sessions() as session:
                open_batches = await session.scalar(
                    select(func.count())
                    .select_from(DeliveryBatch)
                    .where(DeliveryBatch.status != BatchStatus.DONE.value)
                )
            if open_batches == 0:
                break
            await asyncio.sleep(0.1)
        assert open_batches == 0, "the second worker did not finish the send"
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=15)

    async with runtime.sessions() as session:
        reached = await session.scalar(
            select(func.count(func.distinct(PushEvent.install_id))).where(
                PushEvent.kind == "push_sent"
            )
        )
    assert reached == DEVICES  # every device got its push: nothing lost
    accepted = sim_control.get("/_sim/stats").json()["apns"]["accepted"] - accepted_before
    # At most the batch in flight (one per worker with concurrency 1) went out twice.
    assert DEVICES <= accepted <= DEVICES + BATCH
