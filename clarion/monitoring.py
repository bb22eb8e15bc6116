"""`/metrics` on CLARION_METRICS_PORT, and the gauges read from the database when it is scraped
(docs/metrics.md, docs/decisions/0043-metrics.md).

The server is a few lines of asyncio in the process's own loop rather than prometheus_client's
threaded one: the database gauges are read with the process's async sessions (SQLite's run on
the loop itself), which a thread could not use. It answers `GET /metrics` and nothing else, on
its own port, so that the numbers are never on the public API by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from clarion.campaigns.models import CampaignRun, RunState
from clarion.config import Settings
from clarion.db import utcnow
from clarion.delivery.models import BATCHES, BatchStatus
from clarion.metrics import start_counting, stop_counting, watch_pool

log = logging.getLogger(__name__)

# Counting the outbox stops here: a COUNT over a backlog of millions of batches would cost
# the database more than the scrape is worth. The gauge then reads "at least this many".
COUNT_CAP = 100_000
# Runs that are still going; finished ones (done, failed, expired, stopped) accumulate for ever
# and are counted by the campaign's statistics, not by a scrape.
ACTIVE_RUN_STATES = (RunState.FANNING_OUT.value, RunState.DELIVERING.value)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def metrics_wanted(settings: Settings) -> bool:
    """Whether this process counts: when it serves `/metrics`, or writes its numbers to the
    multiprocess directory for a sibling that does. Off by default; the operator's switch is
    CLARION_METRICS_PORT (decision 0045)."""
    return bool(settings.metrics_port) or multiprocess_dir() is not None


class DatabaseGauges(Collector):
    """Queue depth, age of the oldest due batch and campaign runs by state, read with a few
    bounded, indexed queries (ix_delivery_batches_status_not_before, ix_campaign_runs_state)
    at most once per `every` seconds however often Prometheus scrapes, or however many
    Prometheus servers do."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        every: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._every = every
        self._monotonic = monotonic
        self._now = now
        self._read_at: float | None = None
        self._batches: dict[str, int] = {}
        self._oldest_age = 0.0
        self._runs: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:  # two scrapes at once read the database once
            if self._read_at is not None and self._monotonic() - self._read_at < self._every:
                return
            now = self._now()
            async with self._sessions() as session:
                batches = {}
                for status in (BatchStatus.PENDING.value, BatchStatus.SENDING.value):
                    capped = select(BATCHES.c.id).where(BATCHES.c.status == status)
                    counted = select(func.count()).select_from(capped.limit(COUNT_CAP).subquery())
                    batches[status] = (await session.execute(counted)).scalar_one()
                oldest = (
                    await session.execute(
                        select(func.min(BATCHES.c.not_before)).where(
                            BATCHES.c.status == BatchStatus.PENDING.value,
                            BATCHES.c.not_before <= now,
                        )
                    )
                ).scalar_one()
                runs = dict.fromkeys(ACTIVE_RUN_STATES, 0)
                found = await session.execute(
                    select(CampaignRun.state, func.count())
                    .where(CampaignRun.state.in_(ACTIVE_RUN_STATES))
                    .group_by(CampaignRun.state)
                )
                runs.update(dict(found.all()))
            self._batches = batches
            self._oldest_age = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
            self._runs = runs
            self._read_at = self._monotonic()

    def collect(self) -> Iterable[Metric]:
        if self._read_at is None:
            return
        depth = GaugeMetricFamily(
            "clarion_queue_batches",
            f"Delivery batches by status (pending: waiting for a worker, due or not; sending: "
            f"claimed), counted up to {COUNT_CAP}.",
            labels=["status"],
        )
        for status, count in self._batches.items():
            depth.add_metric([status], count)
        yield depth
        yield GaugeMetricFamily(
            "clarion_queue_oldest_pending_age_seconds",
            "How long the oldest due pending batch has waited for a worker (0: none waiting).",
            value=self._oldest_age,
        )
        runs = GaugeMetricFamily(
            "clarion_campaign_runs",
            "Campaign runs in progress by state (fanning_out, delivering).",
            labels=["state"],
        )
        for state, count in self._runs.items():
            runs.add_metric([state], count)
        yield runs


class MetricsServer:
    def __init__(self, gauges: DatabaseGauges) -> None:
        self.gauges = gauges
        self._registry = CollectorRegistry()
        self._multiprocess = multiprocess_dir() is not None
        if self._multiprocess:
            MultiProcessCollector(self._registry)  # type: ignore[no-untyped-call]
        self._registry.register(gauges)

    async def exposition(self) -> bytes:
        try:
            await self.gauges.refresh()
        except Exception:
            # The process's own counters are still worth serving; the gauges keep their last
            # reading (or are left out until one succeeds).
            log.exception("metrics: reading the database gauges failed")
        # Reading every process's file takes milliseconds: off the loop.
        own = await asyncio.to_thread(generate_latest, self._registry)
        if self._multiprocess:
            return own
        return await asyncio.to_thread(generate_latest, REGISTRY) + own

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, path, *_ = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""]
            if method not in (b"GET", b"HEAD"):
                status, body, kind = b"405 Method Not Allowed", b"GET only\n", b"text/plain"
            elif path.split(b"?", 1)[0] != b"/metrics":
                status, body, kind = b"404 Not Found", b"/metrics only\n", b"text/plain"
            else:
                status, body = b"200 OK", await self.exposition()
                kind = CONTENT_TYPE_LATEST.encode()
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (status, kind, len(body))
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a scanner or a client gone: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class MetricsEndpoint:
    """What `start_metrics` set up for the life of a process; `stop` undoes it."""

    def __init__(
        self,
        served: MetricsServer | None,
        server: asyncio.Server | None,
        stop_watching: Callable[[], None] | None,
    ) -> None:
        self.served = served
        self._server = server
        self._stop_watching = stop_watching

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._stop_watching is not None:
            self._stop_watching()
            self._stop_watching = None
            if multiprocess_dir() is not None:
                mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]  # its live gauges (the pool) stop counting


async def start_metrics(
    settings: Settings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> MetricsEndpoint:
    """For the life of a process, when metrics are wanted: counting on, its pool followed in
    the gauges, and `/metrics` served when CLARION_METRICS_PORT is set. In multiprocess mode a
    process that finds the port taken (a sibling serves it) goes on: its values reach the
    sibling's answer through the directory."""
    if not metrics_wanted(settings):
        return MetricsEndpoint(None, None, None)
    multiprocess = multiprocess_dir() is not None
    start_counting()
    stop_pool = watch_pool(engine.sync_engine.pool, settings.database_pool_size)

    def stop_watching() -> None:
        stop_pool()
        stop_counting()

    if not settings.metrics_port:
        return MetricsEndpoint(None, None, stop_watching)
    served = MetricsServer(DatabaseGauges(sessions))
    try:
        server = await asyncio.start_server(
            served.handle, settings.metrics_host, settings.metrics_port
        )
    except OSError as exc:
        if not multiprocess:
            stop_watching()
            raise
        log.warning(
            "metrics: port %s not served by this process (%s); its values are in %s",
            settings.metrics_port,
            exc,
            multiprocess_dir(),
        )
        return MetricsEndpoint(None, None, stop_watching)
    return MetricsEndpoint(served, server, stop_watching)
