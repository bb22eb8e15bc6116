"""`/healthz` and `/readyz`, what load balancers and orchestrators probe (docs/operations.md,
"Health checks"). They take no key, by design: docs/security.md says why, and what they show.

`/healthz` answers while the process serves HTTP: it reads nothing. `/readyz` answers 200 when
this process can do its work: the database answers within `DATABASE_TIMEOUT_SECONDS`, its
schema has every migration this code needs (read at most every `SCHEMA_CACHE_SECONDS`), and
each background loop has beaten lately (clarion.health); 503 with the check that failed
otherwise. A failure is named by a short word or an exception's class name, never its text
(which could name a host, a user or a query).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Connection

from clarion.migrate import schema_state
from clarion.runtime import Runtime

# Below the 5 s most load balancers wait for a probe's answer (AWS ALB, GCP, Kubernetes' 1 s
# default is raised in docs/operations.md), so a slow database is reported as such rather than
# as a probe timeout. On SQLite this includes waiting for its one connection (decision 0006).
DATABASE_TIMEOUT_SECONDS = 2.0
# The schema changes only when someone migrates; a probe every second from several balancers
# then reads alembic_version once per 5 s, and a process sees a finished migration 5 s late.
SCHEMA_CACHE_SECONDS = 5.0


def _ping(connection: Connection) -> None:
    connection.exec_driver_sql("SELECT 1")


class Probe(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


def probes_router(runtime: Runtime) -> APIRouter:
    router = APIRouter(tags=["health"])
    clock = runtime.heartbeats.clock
    schema: tuple[str, float] | None = None  # the last answer, and when it was read

    async def database() -> tuple[str, str]:
        """The database's check and the schema's."""
        nonlocal schema
        now = clock.monotonic()
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
                async with runtime.engine.connect() as connection:
                    if schema is not None and now - schema[1] < SCHEMA_CACHE_SECONDS:
                        # run_sync: the SQLite driver's statements never await (decision 0006),
                        # which AsyncConnection.execute refuses.
                        await connection.run_sync(_ping)
                    else:
                        schema = (await connection.run_sync(schema_state), now)
        except Exception as exc:
            return type(exc).__name__, "unknown"
        return "ok", schema[0]

    @router.get("/healthz", response_model=Probe)
    async def healthz() -> Probe:
        """The process is alive and serves HTTP (nothing is checked)."""
        return Probe(status="ok", checks={})

    @router.get(
        "/readyz",
        response_model=Probe,
        responses={503: {"model": Probe, "description": "A check failed (named in `checks`)."}},
    )
    async def readyz() -> JSONResponse:
        """The process can do its work: database, migrations, background loops."""
        database_check, schema_check = await database()
        stale = runtime.heartbeats.stale(clock.monotonic())
        checks = {
            "database": database_check,
            "migrations": schema_check,
            "loops": "stale: " + ", ".join(stale) if stale else "ok",
        }
        ready = all(value == "ok" for value in checks.values())
        probe = Probe(status="ok" if ready else "unavailable", checks=checks)
        return JSONResponse(probe.model_dump(), status_code=200 if ready else 503)

    return router
