"""What a Clarion process holds for its lifetime: engine, sessions, queue, HTTP/2 client, workers.

`clarion serve` on SQLite runs the API, the delivery workers, the outbox sweep, the campaign
scheduler, GDPR requests, flat-file imports and daily exports in one process
(the embedded default); `clarion worker` runs only the workers; `clarion serve` on PostgreSQL
runs only the API unless told to run workers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from clarion.apps.service import KeyCache
from clarion.campaigns import stats
from clarion.campaigns.scheduler import CampaignScheduler
from clarion.config import Settings
from clarion.connectors.service import ImportRunner
from clarion.db import create_engine, create_sessionmaker
from clarion.delivery.pool import ProviderPool
from clarion.delivery.service import Deliverer
from clarion.exports.service import ExportRunner
from clarion.exports.service import process_requests as process_export_requests
from clarion.gdpr.service import process_pending as process_gdpr_requests
from clarion.http2 import Http2Client
from clarion.queue import JobQueue
from clarion.security import SecretBox
from clarion.transactional.service import SendIntake

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: AsyncEngine = create_engine(
            settings.resolved_database_url, pool_size=settings.database_pool_size
        )
        self.sessions: async_sessionmaker[AsyncSession] = create_sessionmaker(self.engine)
        self.box = SecretBox.from_settings(settings.secret_key, settings.var_dir)
        self.key_cache = KeyCache(settings.auth_cache_seconds)
        self.queue = JobQueue(
            settings.resolved_queue,
            settings.resolved_database_url,
            heartbeat_seconds=settings.job_heartbeat_seconds,
            job_recipients=settings.batch_size,
        )
        self.send_intake = SendIntake(self.sessions, self.queue, batch_size=settings.batch_size)
        self._client: Http2Client | None = None
        self._pool: ProviderPool | None = None
        self.deliverer: Deliverer | None = None
        self.scheduler: CampaignScheduler | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, *, workers: bool) -> None:
        await self.queue.start()
        if workers:
            self._client = Http2Client(ca_file=self.settings.provider_ca_file or None)
            self._pool = ProviderPool(self._client, self.settings, self.box)
            self.deliverer = Deliverer(self.sessions, self._pool, self.queue, self.settings)
            self.queue.register_worker(
                self.deliverer.deliver_batches, concurrency=self.settings.worker_concurrency
            )
            # Batches committed before a crash (or whose in-memory job died with the process)
            # are picked up at once.
            await self.deliverer.sweep_outbox(grace_seconds=0)
            self._tasks.append(asyncio.create_task(self.queue.run_worker(), name="worker"))
            self._tasks.append(asyncio.create_task(self._sweep_forever(), name="outbox-sweep"))
            self._tasks.append(asyncio.create_task(self._gdpr_forever(), name="gdpr"))
            self._tasks.append(asyncio.create_task(self._imports_forever(), name="imports"))
            self._tasks.append(asyncio.create_task(self._exports_forever(), name="exports"))
            self._tasks.append(
                asyncio.create_task(self._export_requests_forever(), name="export-requests")
            )
            self._tasks.append(asyncio.create_task(self._stats_forever(), name="statistics"))
            self.scheduler = CampaignScheduler(self.sessions, self.queue, self.settings)
            self._tasks.append(
                asyncio.create_task(self.scheduler.run_forever(), name="campaign-scheduler")
            )

    @asynccontextmanager
    async def provider_pool(self) -> AsyncIterator[ProviderPool]:
        """The workers' providers, or in a process without workers (an API-only `serve`) a
        short-lived pool, for a one-off push such as the dashboard's credentials test."""
        if self._pool is not None:
            yield self._pool
            return
        client = Http2Client(ca_file=self.settings.provider_ca_file or None)
        pool = ProviderPool(client, self.settings, self.box)
        try:
            yield pool
        finally:
            await pool.aclose()
            await client.aclose()

    async def _sweep_forever(self) -> None:
        assert self.deliverer is not None
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                await self.deliverer.sweep_outbox()
            except Exception:
                # A database hiccup must not end the sweep for the life of the process.
                log.exception("outbox sweep failed; trying again next interval")

    async def _gdpr_forever(self) -> None:
        async with httpx.AsyncClient() as client:  # GDPR callbacks
            while True:
                try:
                    await process_gdpr_requests(
                        self.sessions, var_dir=self.settings.var_dir, client=client
                    )
                except Exception:
                    log.exception("GDPR request processing failed; trying again")
                await asyncio.sleep(self.settings.scheduler_interval_seconds)

    async def _imports_forever(self) -> None:
        runner = ImportRunner(self.sessions, self.settings, self.box)
        while True:
            try:
                await runner.poll_due()
            except Exception:
                log.exception("flat-file import polling failed; trying again")
            await asyncio.sleep(self.settings.import_check_seconds)

    async def _exports_forever(self) -> None:
        runner = ExportRunner(self.sessions, self.settings, self.box)
        while True:
            try:
                await runner.run_due()
            except Exception:
                log.exception("daily exports failed; trying again")
            await asyncio.sleep(self.settings.export_check_seconds)

    async def _export_requests_forever(self) -> None:
        while True:
            try:
                await process_export_requests(self.sessions, var_dir=self.settings.var_dir)
            except Exception:
                log.exception("export requests failed; trying again")
            await asyncio.sleep(self.settings.scheduler_interval_seconds)

    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval_seconds)
            try:
                await stats.keep_up(self.sessions)
            except Exception:
                log.exception("campaign statistics upkeep failed; trying again")

    async def wait(self) -> None:
        """Until the workers stop (for `clarion worker`)."""
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        self.queue.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.scheduler is not None:
            await self.scheduler.aclose()
        if self._pool is not None:
            await self._pool.aclose()
        if self._client is not None:
            await self._client.aclose()
        await self.queue.aclose()
        await self.engine.dispose()
