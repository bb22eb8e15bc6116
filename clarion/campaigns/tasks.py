"""What runs in the background for campaigns: the campaign scheduler starts due runs, streams
their audience into the delivery outbox (the page writer is clarion.campaigns.fanout), and
closes runs once delivered. Runs in every process that runs delivery workers (clarion.runtime
starts it).

Exactly once, across processes and restarts (docs/decisions/0010-campaign-fan-out.md):
- a run starts under a row lock on its campaign, and (campaign, occurrence) is unique;
- the fan-out walks installations in primary-key order (keyset pagination, one page per
  transaction); each page's batches commit together with the run's new position, and only if
  this process still holds the run's lease and the run has not moved since it read it, so a
  page is never written twice;
- a dead process's run is taken over, once its lease has run out, where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.campaigns.fanout import FanOut, Position, RunFailed, reason_of
from clarion.campaigns.models import (
    Campaign,
    CampaignRun,
    CampaignState,
    RunState,
)
from clarion.campaigns.recurrence import next_to_run, occurrence_end
from clarion.campaigns.schemas import CampaignBody
from clarion.campaigns.service import landing_themes, send_content, settle, stop_campaign
from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.config import Settings
from clarion.db import transaction
from clarion.delivery.models import BATCHES, SENDS, BatchStatus, Send, SendKind
from clarion.metrics import count_sends
from clarion.queue import JobQueue

log = logging.getLogger(__name__)

_ACTIVE_RUN_STATES = (RunState.FANNING_OUT.value, RunState.DELIVERING.value)
# A fan-out that failed for a reason that may pass (the database unreachable) is tried again
# after 2, 4, 8 … seconds, at most every 5 minutes, rather than at every tick.
_RETRY_MAX_SECONDS = 300


class CampaignScheduler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._settings = settings
        self._clock = clock
        self._owner = uuid.uuid4().hex  # this scheduler, as a lease holder
        self._lease = timedelta(seconds=settings.fan_out_lease_seconds)
        self._fan_outs: dict[int, asyncio.Task[None]] = {}  # run id -> task, in this process
        self._writer = FanOut(sessions, queue, settings, owner=self._owner, clock=clock)
        self._failures: dict[int, int] = {}  # run id -> fan-outs failed in a row, here

    async def tick(self, *, wait: bool = True) -> None:
        """Start what is due, fan out what can be, close what is delivered. `wait`: return
        once this tick's fan-outs are done (tests); otherwise they go on in the background."""
        now = self._clock()
        await self._start_due_runs(now)
        started = await self._spawn_fan_outs(now)
        if wait and started:
            await asyncio.gather(*started)
        await self._finish_delivered_runs(self._clock())

    async def aclose(self) -> None:
        for task in list(self._fan_outs.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- starting runs -------------------------------------------------------------------

    async def _start_due_runs(self, now: datetime) -> None:
        async with self._sessions() as session:
            due = list(
                await session.scalars(
                    select(Campaign.id)
                    .where(
                        Campaign.state.in_(
                            [CampaignState.SCHEDULED.value, CampaignState.RUNNING.value]
                        ),
                        Campaign.next_run_at <= now,
                        Campaign.deleted_at.is_(None),
                    )
                    .order_by(Campaign.next_run_at)
                    .limit(100)
                )
            )
        for campaign_id in due:
            await self._start_run(campaign_id, now)

    async def _start_run(self, campaign_id: int, now: datetime) -> None:
        async with transaction(self._sessions) as session:
            campaign = await session.get(Campaign, campaign_id, with_for_update=True)
            if (
                campaign is None
                or campaign.state not in (CampaignState.SCHEDULED, CampaignState.RUNNING)
                or campaign.next_run_at is None
                or campaign.next_run_at > now
            ):
                return  # another process started it, or it changed meanwhile
            try:
                body = CampaignBody.model_validate(campaign.body)
            except ValidationError as exc:
                failed = RunFailed(reason_of(exc))
                session.add(
                    CampaignRun(
                        campaign_id=campaign.id,
                        occurrence=campaign.next_occurrence,
                        scheduled_for=campaign.next_run_at,
                        state=RunState.FAILED.value,
                        body=campaign.body,
                        started_at=now,
                        finished_at=now,
                        failure=failed.reason,
                    )
                )
                await self._fail_campaign(session, campaign, failed, now)
                return
            # If later occurrences fell due too while Clarion was down, only the latest goes.
            index, scheduled_for = next_to_run(body, campaign.next_occurrence, now=now) or (
                campaign.next_occurrence,
                campaign.next_run_at,
            )
            # The next occurrence is scheduled now, not when this run ends: a daily local-time
            # campaign's runs last 26 h and overlap.
            upcoming = next_to_run(body, index + 1, now=now)
            campaign.next_occurrence, campaign.next_run_at = upcoming or (index + 1, None)
            ttl = timedelta(seconds=body.time_to_live) if body.time_to_live else None
            # Due while Clarion was down and past its time to live: not sent at all.
            expired = ttl is not None and now > occurrence_end(body, scheduled_for) + ttl
            run = CampaignRun(
                campaign_id=campaign.id,
                occurrence=index,
                scheduled_for=scheduled_for,
                state=RunState.EXPIRED.value if expired else RunState.FANNING_OUT.value,
                body=campaign.body,
                cursor=0,
                pages=0,
                zones_done=[] if body.local_push_time is not None else None,
                started_at=now,
                finished_at=now if expired else None,
            )
            session.add(run)
            await session.flush()
            if expired:
                log.warning("campaign %s occurrence %d expired unsent", campaign.token, index)
            else:
                themes = await landing_themes(session, app_id=campaign.app_id, landing=body.landing)
                count_sends(session, SendKind.CAMPAIGN.value, len(body.versions))
                for version in body.versions:
                    session.add(
                        Send(
                            token=str(uuid.uuid4()),
                            app_id=campaign.app_id,
                            kind=SendKind.CAMPAIGN.value,
                            campaign_token=campaign.token,
                            dev_only=campaign.dev_only,
                            content=send_content(body, version, themes),
                            created_at=now,
                            expires_at=occurrence_end(body, scheduled_for) + ttl if ttl else None,
                            run_id=run.id,
                            version=version,
                        )
                    )
            settle(campaign, active_runs=await _has_active_runs(session, campaign.id), now=now)

    # -- fan-out -------------------------------------------------------------------------

    async def _spawn_fan_outs(self, now: datetime) -> list[asyncio.Task[None]]:
        async with self._sessions() as session:
            runs = list(
                await session.scalars(
                    select(CampaignRun.id).where(
                        CampaignRun.state == RunState.FANNING_OUT.value,
                        or_(CampaignRun.lease_until.is_(None), CampaignRun.lease_until < now),
                    )
                )
            )
        started: list[asyncio.Task[None]] = []
        for run_id in runs:
            if run_id in self._fan_outs:
                continue
            task = asyncio.create_task(self._fan_out(run_id), name=f"fan-out-{run_id}")
            self._fan_outs[run_id] = task
            task.add_done_callback(self._forget_fan_out)
            started.append(task)
        return started

    def _forget_fan_out(self, task: asyncio.Task[None]) -> None:
        for run_id, running in list(self._fan_outs.items()):
            if running is task:
                del self._fan_outs[run_id]

    async def _fan_out(self, run_id: int) -> None:
        try:
            position = await self._take_lease(run_id)
            if position is None:
                return
            try:
                await self._write_pages(run_id, position)
            except RunFailed as failed:
                await self._fail_run(run_id, failed)
                return
            except Exception as exc:
                await self._retry_later(run_id, exc)
                return
            self._failures.pop(run_id, None)
            await self._drop_lease(run_id)
        except Exception as exc:  # the database itself failed (taking or dropping the lease)
            self._log_retry(run_id, exc, "once its lease has run out")

    async def _write_pages(self, run_id: int, position: Position) -> None:
        renewing = asyncio.create_task(
            self._renew_lease_forever(run_id), name=f"fan-out-{run_id} lease"
        )
        try:
            await self._writer.run(run_id, position)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _renew_lease_forever(self, run_id: int) -> None:
        """While this process writes the run's pages: a page held up (a cap's lock, a slow
        database) does not let the lease run out under a live writer."""
        every = self._lease.total_seconds() / 4
        while True:
            await asyncio.sleep(every)
            try:
                async with transaction(self._sessions) as session:
                    await session.execute(
                        update(CampaignRun)
                        .where(CampaignRun.id == run_id, CampaignRun.lease_owner == self._owner)
                        .values(lease_until=self._clock() + self._lease)
                    )
            except Exception:
                # The next renewal may succeed; the page's own write renews it too.
                log.warning("renewing the lease of campaign run %d failed", run_id, exc_info=True)

    async def _retry_later(self, run_id: int, exc: Exception) -> None:
        """A failure that may pass: the run keeps its lease, unowned, for a growing delay."""
        delay = min(2 ** (self._failures.get(run_id, 0) + 1), _RETRY_MAX_SECONDS)
        self._log_retry(run_id, exc, f"in {delay} s")
        async with transaction(self._sessions) as session:
            await session.execute(
                update(CampaignRun)
                .where(CampaignRun.id == run_id, CampaignRun.lease_owner == self._owner)
                .values(lease_owner=None, lease_until=self._clock() + timedelta(seconds=delay))
            )

    def _log_retry(self, run_id: int, exc: Exception, when: str) -> None:
        # The traceback once per run, a line after that: a run failing at every tick for hours
        # would otherwise write the same traceback each time.
        failures = self._failures[run_id] = self._failures.get(run_id, 0) + 1
        log.warning(
            "fan-out of campaign run %d failed (%s); it resumes %s",
            run_id,
            reason_of(exc),
            when,
            exc_info=exc if failures == 1 else None,
        )

    async def _fail_run(self, run_id: int, failed: RunFailed) -> None:
        """The run, and its campaign, are failed: retrying would fail the same way."""
        self._failures.pop(run_id, None)
        now = self._clock()
        async with transaction(self._sessions) as session:
            run = await session.get(CampaignRun, run_id)
            assert run is not None
            campaign = await session.get(Campaign, run.campaign_id, with_for_update=True)
            assert campaign is not None
            await self._fail_campaign(session, campaign, failed, now)
            run.state, run.failure = RunState.FAILED.value, failed.reason
            run.lease_owner, run.lease_until = None, None

    @staticmethod
    async def _fail_campaign(
        session: AsyncSession, campaign: Campaign, failed: RunFailed, now: datetime
    ) -> None:
        """Stops the campaign where it is (its other runs and undelivered batches too), as
        failed: it is not tried again until updated and set live."""
        log.warning("campaign %s failed and will not be retried: %s", campaign.token, failed)
        await stop_campaign(session, campaign, now=now)
        campaign.state = CampaignState.FAILED.value
        campaign.updated_at = now

    async def _take_lease(self, run_id: int) -> Position | None:
        now = self._clock()
        async with transaction(self._sessions) as session:
            taken = (
                await session.execute(
                    update(CampaignRun)
                    .where(
                        CampaignRun.id == run_id,
                        CampaignRun.state == RunState.FANNING_OUT.value,
                        or_(CampaignRun.lease_until.is_(None), CampaignRun.lease_until < now),
                    )
                    .values(lease_owner=self._owner, lease_until=now + self._lease)
                    .returning(
                        CampaignRun.pages,
                        CampaignRun.cursor,
                        CampaignRun.wave,
                        CampaignRun.zones_done,
                    )
                )
            ).one_or_none()
        if taken is None:
            return None
        return Position(taken.pages, taken.cursor, taken.wave, taken.zones_done)

    async def _drop_lease(self, run_id: int) -> None:
        async with transaction(self._sessions) as session:
            await session.execute(
                update(CampaignRun)
                .where(CampaignRun.id == run_id, CampaignRun.lease_owner == self._owner)
                .values(lease_owner=None, lease_until=None)
            )

    # -- closing runs --------------------------------------------------------------------

    async def _finish_delivered_runs(self, now: datetime) -> None:
        unfinished = (
            select(BATCHES.c.id)
            .join(SENDS, SENDS.c.id == BATCHES.c.send_id)
            .where(SENDS.c.run_id == CampaignRun.id, BATCHES.c.status != BatchStatus.DONE.value)
            .exists()
        )
        async with self._sessions() as session:
            delivered = list(
                await session.execute(
                    select(CampaignRun.id, CampaignRun.campaign_id).where(
                        CampaignRun.state == RunState.DELIVERING.value, ~unfinished
                    )
                )
            )
        for run_id, campaign_id in delivered:
            async with transaction(self._sessions) as session:
                campaign = await session.get(Campaign, campaign_id, with_for_update=True)
                closed = await session.execute(
                    update(CampaignRun)
                    .where(
                        CampaignRun.id == run_id,
                        CampaignRun.state == RunState.DELIVERING.value,
                    )
                    .values(state=RunState.DONE.value, finished_at=now)
                )
                if not closed.rowcount:  # type: ignore[attr-defined]
                    continue  # another process closed it
                if campaign is not None and campaign.state == CampaignState.RUNNING.value:
                    active = await _has_active_runs(session, campaign_id)
                    settle(campaign, active_runs=active, now=now)


async def _has_active_runs(session: AsyncSession, campaign_id: int) -> bool:
    found = await session.scalar(
        select(CampaignRun.id)
        .where(
            CampaignRun.campaign_id == campaign_id,
            CampaignRun.state.in_(_ACTIVE_RUN_STATES),
        )
        .limit(1)
    )
    return found is not None
