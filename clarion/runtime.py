"""What a Clarion process holds for its lifetime: engine, sessions, queue, HTTP/2 client, workers.

`clarion serve` on SQLite runs the API, the delivery workers, the outbox sweep, the campaign
scheduler, the automation dispatcher, GDPR requests, flat-file imports and daily exports in one
process (the embedded default); `clarion worker` runs only the workers; `clarion serve` on
PostgreSQL runs only the API unless told to run workers too.

Runtime.start is the one list of everything that runs in the background; each domain keeps
its background work in its `tasks.py` (delivery, campaigns, automations, capping, stats, gdpr,
imports, exports).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from clarion.apps.service import KeyCache
from clarion.automations.catalogue import AutomationCatalogue
from clarion.automations.service import enter_stored
from clarion.automations.tasks import AutomationDispatcher
from clarion.campaigns.tasks import CampaignScheduler
from clarion.capping.tasks import PURGE_SECONDS, purge_expired_receipts
from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.config import Settings
from clarion.db import create_engine, create_sessionmaker, utcnow
from clarion.delivery.pool import ProviderPool, provider_client
from clarion.delivery.tasks import Deliverer
from clarion.exports.tasks import ExportRunner
from clarion.exports.tasks import process_requests as process_export_requests
from clarion.gdpr.tasks import ARCHIVE_CHECK_SECONDS, delete_expired_archives
from clarion.gdpr.tasks import process_pending as process_gdpr_requests
from clarion.health import Heartbeats, beat
from clarion.http2 import Http2Client
from clarion.imports.tasks import ImportRunner
from clarion.inapp.eligibility import InAppFeed
from clarion.inapp.tasks import FLUSH_SECONDS, POLL_SECONDS, RevisionPoller, SupplyWriter
from clarion.outbound import OutboundPolicy, WebhookClient
from clarion.queue import JobQueue
from clarion.retention.tasks import RETENTION_SECONDS, EventRetention
from clarion.sdk.service import EventIntake
from clarion.security import SecretBox
from clarion.stats.tasks import DAYS_PER_TRANSACTION, DAYS_PER_TRANSACTION_SQLITE, keep_up
from clarion.transactional.service import SendIntake

log = logging.getLogger(__name__)


def tune_garbage_collector() -> None:
    """For the long-running processes (serve, worker), once started up. What is loaded by then
    lives for the process: frozen, the collector no longer walks it. And the hot paths allocate
    tens of thousands of objects per call or job (60,000 values in a 10,000-user Custom Data
    call, a Recipient, a request and an event row per notification): at the default threshold
    of 700 the collector runs every few hundred of them, half of the server's CPU on that route
    (measured: 55 us per user update with these thresholds, 103 us at the default) and 9% of a
    delivery worker's. Cycles are still collected, later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


class Runtime:
    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.heartbeats = Heartbeats(clock)  # the loops' liveness, read by /readyz
        self.engine: AsyncEngine = create_engine(
            settings.resolved_database_url,
            pool_size=settings.database_pool_size,
            check_nested=settings.check_nested_sessions,
        )
        self.sessions: async_sessionmaker[AsyncSession] = create_sessionmaker(self.engine)
        self.box = SecretBox.from_settings(settings.secret_key, settings.var_dir)
        self.outbound = OutboundPolicy.from_settings(settings)
        self.key_cache = KeyCache(settings.auth_cache_seconds)
        self.queue = JobQueue(
            settings.resolved_queue,
            settings.resolved_database_url,
            heartbeat_seconds=settings.job_heartbeat_seconds,
            job_recipients=settings.batch_size,
        )
        self.send_intake = SendIntake(self.sessions, self.queue, batch_size=settings.batch_size)
        # Live automations per app, matched with events as they are stored (Trigger Events API
        # routes, the SDK's event batches).
        self.automations = AutomationCatalogue()
        self.sdk_events = EventIntake(
            self.engine,
            self.sessions,
            on_stored=self._enter_sdk_events,
            wanted=self._automations_listen,
        )
        self._client: Http2Client | None = None
        self._pool: ProviderPool | None = None
        self.deliverer: Deliverer | None = None
        self.scheduler: CampaignScheduler | None = None
        self.dispatcher: AutomationDispatcher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._worker: asyncio.Task[None] | None = None  # the queue's worker loop
        self._callbacks: WebhookClient | None = None  # GDPR requests' callbacks
        # The SDK's in-app fetch (clarion.inapp): catalogues, validators, supplies.
        self.inapp_supplies = SupplyWriter(self.sessions)
        self.inapp = InAppFeed(self.sessions, self.engine, supplied=self.inapp_supplies.record)
        self.inapp_revisions = RevisionPoller(self.sessions, self.inapp)

    async def _enter_sdk_events(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        await enter_stored(session, self.automations, rows, now=utcnow())

    def _automations_listen(self, app_id: int, name: str) -> bool | None:
        """Without the database: None when the app's automations are not known lately."""
        live = self.automations.fresh(app_id)
        return None if live is None else live.listens_to(name)

    async def start(self, *, workers: bool, http: bool = True) -> None:
        """`http`: the process serves the API (`clarion serve`), not only workers."""
        await self.queue.start(consume=workers)
        if http:
            # What the SDK's in-app fetch holds in memory follows changes made in any process.
            self._repeat("in-app revisions", self.inapp_revisions.tick, every=POLL_SECONDS)
            self._repeat(
                "in-app supplies", self.inapp_supplies.flush, every=FLUSH_SECONDS, wait_first=True
            )
        if workers:
            self._client = provider_client(self.settings)
            self._pool = ProviderPool(self._client, self.settings, self.box)
            self.deliverer = Deliverer(self.sessions, self._pool, self.queue, self.settings)
            self.queue.register_worker(
                self.deliverer.deliver_batches, concurrency=self.settings.worker_concurrency
            )
            # Batches committed before a crash (or whose in-memory job died with the process)
            # are picked up at once.
            await self.deliverer.sweep_outbox(grace_seconds=0)
            self._worker = asyncio.create_task(self.queue.run_worker(), name="worker")
            # pgqueuer's consumer has no pass of its own to beat from: stale once it has ended.
            self.heartbeats.watch("delivery worker", self._worker)
            settings = self.settings
            # The leases of the batches this worker holds, while it is alive; the batches of
            # workers that died, taken over as soon as their lease expires (decision 0032).
            self._repeat(
                "delivery lease renewal",
                self.deliverer.renew_leases,
                every=settings.delivery_lease_renew_seconds,
                wait_first=True,
            )
            self._repeat(
                "delivery lease sweep",
                self.deliverer.sweep_leases,
                every=settings.lease_sweep_seconds,
                wait_first=True,
            )
            # (Swept once just above.)
            self._repeat(
                "outbox sweep",
                self.deliverer.sweep_outbox,
                every=settings.sweep_interval_seconds,
                wait_first=True,
            )
            self._callbacks = WebhookClient(self.outbound)
            self._repeat(
                "GDPR requests",
                partial(
                    process_gdpr_requests,
                    self.sessions,
                    var_dir=settings.var_dir,
                    client=self._callbacks,
                ),
                every=settings.scheduler_interval_seconds,
            )
            self._repeat(
                "GDPR archive expiry",
                partial(
                    delete_expired_archives,
                    self.sessions,
                    var_dir=settings.var_dir,
                    retention=timedelta(days=settings.gdpr_archive_days),
                ),
                every=ARCHIVE_CHECK_SECONDS,
            )
            self._repeat(
                "flat-file imports",
                ImportRunner(self.sessions, settings, self.box).poll_due,
                every=settings.import_check_seconds,
            )
            self._repeat(
                "daily exports",
                ExportRunner(self.sessions, settings, self.box).run_due,
                every=settings.export_check_seconds,
            )
            self._repeat(
                "export requests",
                partial(process_export_requests, self.sessions, var_dir=settings.var_dir),
                every=settings.scheduler_interval_seconds,
            )
            self._repeat(
                "statistics upkeep",
                partial(
                    keep_up,
                    self.sessions,
                    days=(
                        DAYS_PER_TRANSACTION_SQLITE if settings.is_sqlite else DAYS_PER_TRANSACTION
                    ),
                ),
                every=settings.stats_interval_seconds,
                wait_first=True,
            )
            self._repeat(
                "capping receipts purge",
                partial(purge_expired_receipts, self.sessions),
                every=PURGE_SECONDS,
                wait_first=True,
            )
            retention = EventRetention(self.engine, self.sessions, settings)
            self._repeat("event retention", retention.run, every=RETENTION_SECONDS)
            self.scheduler = CampaignScheduler(self.sessions, self.queue, self.settings)
            # Fan-outs go on in the background between ticks (CampaignScheduler.aclose ends them).
            self._repeat(
                "campaign scheduler",
                partial(self.scheduler.tick, wait=False),
                every=settings.scheduler_interval_seconds,
            )
            # Due automation entries, into the outbox as the workers' batches. Every process
            # running workers runs one: they share the entries (decision 0029).
            self.dispatcher = AutomationDispatcher(self.sessions, self.queue, settings)
            self._repeat(
                "automation dispatcher",
                self.dispatcher.tick,
                every=settings.automation_poll_seconds,
            )

    @asynccontextmanager
    async def provider_pool(self) -> AsyncIterator[ProviderPool]:
        """The workers' providers, or in a process without workers (an API-only `serve`) a
        short-lived pool, for a one-off push such as the dashboard's credentials test."""
        if self._pool is not None:
            yield self._pool
            return
        client = provider_client(self.settings)
        pool = ProviderPool(client, self.settings, self.box)
        try:
            yield pool
        finally:
            await pool.aclose()
            await client.aclose()

    def _repeat(
        self,
        name: str,
        job: Callable[[], Awaitable[object]],
        *,
        every: float,
        wait_first: bool = False,
    ) -> None:
        """Runs `job` every `every` seconds for the life of the process. A failure (a database
        hiccup, a storage server down) is logged and the job runs again next time: it must not
        end the loop for the life of the process."""

        self.heartbeats.beat(name, every)  # known to /readyz from now on

        async def forever() -> None:
            self.heartbeats.enter(name, every)
            if wait_first:
                await asyncio.sleep(every)
            while True:
                beat()
                try:
                    await job()
                except Exception:
                    log.exception("%s failed; trying again in %s s", name, every)
                await asyncio.sleep(every)

        self._tasks.append(asyncio.create_task(forever(), name=name))

    async def wait(self) -> None:
        """Until the workers stop (for `clarion worker`)."""
        tasks = [*self._tasks, *([self._worker] if self._worker else [])]
        if tasks:
            await asyncio.gather(*tasks)

    async def stop(self) -> None:
        """A worker stops without sending anything twice: it takes no more jobs, lets the
        requests on the wire be answered, records them and hands the rest back (Deliverer.stop),
        while its leases are still renewed; then everything else stops."""
        self.queue.stop()
        if self.deliverer is not None:
            try:
                await self.deliverer.stop()
            except Exception:
                log.exception("delivery: stopping failed; the leases will expire")
        if self._worker is not None:
            # pgqueuer returns once its jobs have returned: those dequeued and not started
            # hand their batches back at once (Deliverer.deliver_batches).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._worker, timeout=self.settings.worker_stop_seconds)
            self._worker = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        try:
            await self.inapp_supplies.flush()  # what was handed out since the last flush
        except Exception:
            log.exception("in-app supplies: the last flush failed")
        if self._callbacks is not None:
            await self._callbacks.aclose()
        if self.scheduler is not None:
            await self.scheduler.aclose()
        if self._pool is not None:
            await self._pool.aclose()
        if self._client is not None:
            await self._client.aclose()
        await self.queue.aclose()
        await self.engine.dispose()
