"""What runs in the background for campaigns: the campaign scheduler starts due runs, streams
their audience into the delivery outbox, and closes runs once delivered. Runs in every process
that runs delivery workers (clarion.runtime starts it).

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
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import ColumnElement, insert, or_, select, update
from sqlalchemy.exc import CompileError, DataError, ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.models import App
from clarion.campaigns.models import (
    Campaign,
    CampaignReceipt,
    CampaignRun,
    CampaignState,
    RunState,
)
from clarion.campaigns.recurrence import EARLIEST_UTC_OFFSET, next_to_run, occurrence_end
from clarion.campaigns.schemas import CampaignBody
from clarion.campaigns.service import send_content, settle, stop_campaign
from clarion.config import Settings
from clarion.db import transaction, upsert_insert, utcnow
from clarion.delivery.models import BATCHES, SENDS, BatchStatus, Send, SendKind
from clarion.errors import from_validation_errors
from clarion.queue import BatchJob, JobQueue
from clarion.sdk.models import Installation
from clarion.targeting import service as targeting

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_INSERT_BATCHES = insert(BATCHES).returning(BATCHES.c.id, sort_by_parameter_order=True)
_ACTIVE_RUN_STATES = (RunState.FANNING_OUT.value, RunState.DELIVERING.value)
# How long the time zones of an app's installs are trusted (local-time waves).
_ZONES_TTL_SECONDS = 300.0
# A fan-out that failed for a reason that may pass (the database unreachable) is tried again
# after 2, 4, 8 … seconds, at most every 5 minutes, rather than at every tick.
_RETRY_MAX_SECONDS = 300


class RunFailed(Exception):
    """A run that cannot be sent, and would fail the same way at every retry: its body no
    longer validates (a targeting stored before a limit existed), its audience cannot be
    compiled, or the database refuses the statement itself."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:1024]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return from_validation_errors(exc.errors()).detail
    return f"{type(exc).__name__}: {exc}"


def version_of(
    installation_id: int, seed: int, shares: Sequence[tuple[str | None, int]]
) -> str | None:
    """The A/B version of an installation: a multiplicative hash of its id (Knuth's constant)
    spreads consecutive ids evenly over 0-99, so the split holds within a fraction of a percent
    on any large audience; the seed (from the campaign token) varies it between campaigns."""
    bucket = (((installation_id ^ seed) * 2654435761) & 0xFFFFFFFF) * 100 >> 32
    for version, share in shares:
        if bucket < share:
            return version
        bucket -= share
    return shares[-1][0]


@dataclass(slots=True)
class _Position:
    """Where a run's fan-out stands, as this process last read or wrote it."""

    pages: int
    cursor: int
    wave: list[str] | None
    zones_done: list[str] | None


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a run writes, fixed when it starts (the body snapshot)."""

    run_id: int
    campaign_id: int
    app: App
    body: CampaignBody
    audience: ColumnElement[bool]
    sends: dict[str | None, int]  # A/B version -> send id
    seed: int
    scheduled_for: datetime

    @property
    def shares(self) -> list[tuple[str | None, int]]:
        return list(self.body.versions.items())


class CampaignScheduler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        settings: Settings,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._settings = settings
        self._clock = clock
        self._owner = uuid.uuid4().hex  # this scheduler, as a lease holder
        self._lease = timedelta(seconds=settings.batch_lease_seconds)
        self._page = settings.batch_size * 10
        self._fan_outs: dict[int, asyncio.Task[None]] = {}  # run id -> task, in this process
        self._zones: dict[int, tuple[float, set[str]]] = {}  # app id -> (read at, zones)
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
                failed = RunFailed(_reason(exc))
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
                for version in body.versions:
                    session.add(
                        Send(
                            token=str(uuid.uuid4()),
                            app_id=campaign.app_id,
                            kind=SendKind.CAMPAIGN.value,
                            campaign_token=campaign.token,
                            dev_only=campaign.dev_only,
                            content=send_content(body, version),
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
                await self._fan_out_leased(run_id, position)
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
            _reason(exc),
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

    async def _take_lease(self, run_id: int) -> _Position | None:
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
        return _Position(taken.pages, taken.cursor, taken.wave, taken.zones_done)

    async def _drop_lease(self, run_id: int) -> None:
        async with transaction(self._sessions) as session:
            await session.execute(
                update(CampaignRun)
                .where(CampaignRun.id == run_id, CampaignRun.lease_owner == self._owner)
                .values(lease_owner=None, lease_until=None)
            )

    async def _plan(self, run_id: int) -> _Plan:
        async with self._sessions() as session:
            run = await session.get(CampaignRun, run_id)
            assert run is not None
            campaign = await session.get(Campaign, run.campaign_id)
            assert campaign is not None
            app = await session.get(App, campaign.app_id)
            assert app is not None
            sends = {
                send.version: send.id
                for send in await session.scalars(select(Send).where(Send.run_id == run.id))
            }
            body = CampaignBody.model_validate(run.body)
        audience = targeting.reachable(app_id=app.id, dev_only=campaign.dev_only)
        # A Dev-key campaign reaches every debug installation of the app, untargeted (Batch,
        # spec §1.3): its targeting evaluated against the profiles, events and audiences that a
        # debug install can claim by custom id would answer yes/no about the app's data to
        # whoever holds the Dev key (docs/api-keys.md).
        if body.targeting is not None and not campaign.dev_only:
            audience = audience & targeting.installation_filter(
                body.targeting, app_id=app.id, now=run.scheduled_for
            )
        if body.capping is not None:
            # Capping: installs sent `capping` occurrences already are left out.
            audience = audience & ~(
                select(CampaignReceipt.installation_id)
                .where(
                    CampaignReceipt.campaign_id == campaign.id,
                    CampaignReceipt.installation_id == Installation.id,
                    CampaignReceipt.count >= body.capping,
                )
                .exists()
            )
        return _Plan(
            run_id=run.id,
            campaign_id=campaign.id,
            app=app,
            body=body,
            audience=audience,
            sends=sends,
            seed=int(campaign.token[:8], 16),
            scheduled_for=run.scheduled_for,
        )

    async def _fan_out_leased(self, run_id: int, position: _Position) -> None:
        try:
            plan = await self._plan(run_id)
        except (SQLAlchemyError, OSError):
            raise  # reading the run: may pass
        except Exception as exc:
            # Validating the body and compiling its targeting read nothing: what fails there
            # (a body stored before a limit, a query too deep to compile) fails at every retry.
            raise RunFailed(_reason(exc)) from exc
        local = plan.body.local_push_time is not None
        wall_time = (plan.scheduled_for + EARLIEST_UTC_OFFSET).replace(tzinfo=None)
        while True:
            now = self._clock()
            zone_filter: ColumnElement[bool] | None = None
            wave = position.wave
            if local:
                if wave is None:
                    done = set(position.zones_done or ())
                    wave = await self._due_zones(plan.app, wall_time, done, now)
                    if not wave:
                        if now >= occurrence_end(plan.body, plan.scheduled_for):
                            await self._close_fan_out(run_id)  # every zone has had its turn
                        return  # the next zones are not due yet
                zone_filter = _zone_filter(wave, plan.app.default_timezone)
            page = await self._next_page(plan.audience, zone_filter, position.cursor)
            if not page and not local:
                await self._close_fan_out(run_id)
                return
            if page:
                after = _Position(position.pages + 1, page[-1], wave, position.zones_done)
            else:  # this wave is done: the next one starts from the first installation again
                done_zones = [*(position.zones_done or ()), *(wave or ())]
                after = _Position(position.pages + 1, 0, None, done_zones)
            if not await self._write_page(plan, page, position, after, now):
                return  # stopped, or another process took the run over
            position = after

    async def _due_zones(
        self, app: App, wall_time: datetime, done: set[str], now: datetime
    ) -> list[str]:
        """Time zones of the app's installs whose wall clock has reached the campaign's time
        and which have not had their wave yet (installs with no zone use the app's)."""
        read_at, zones = self._zones.get(app.id, (0.0, set()))
        if time.monotonic() - read_at > _ZONES_TTL_SECONDS:
            async with self._sessions() as session:
                zones = {
                    zone or app.default_timezone
                    for zone in await session.scalars(
                        select(Installation.timezone)
                        .where(Installation.app_id == app.id)
                        .distinct()
                    )
                }
            self._zones[app.id] = (time.monotonic(), zones)
        return sorted(
            zone
            for zone in zones - done
            if wall_time.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC) <= now
        )

    async def _next_page(
        self, audience: ColumnElement[bool], zone_filter: ColumnElement[bool] | None, cursor: int
    ) -> list[int]:
        query = select(Installation.id).where(audience, Installation.id > cursor)
        if zone_filter is not None:
            query = query.where(zone_filter)
        async with self._sessions() as session:
            try:
                return list(
                    await session.scalars(query.order_by(Installation.id).limit(self._page))
                )
            except (CompileError, DataError, ProgrammingError) as exc:
                # The statement itself is refused (too many parameters, a value the column
                # cannot take): the same statement would be refused again.
                raise RunFailed(_reason(exc)) from exc

    async def _write_page(
        self,
        plan: _Plan,
        page: list[int],
        before: _Position,
        after: _Position,
        now: datetime,
    ) -> bool:
        """One page's batches and the run's new position, in one transaction; False when the
        run is no longer this process's to write (stopped, or taken over)."""
        shares = plan.shares
        by_version: dict[str | None, list[int]] = {version: [] for version, _ in shares}
        if len(shares) == 1:
            by_version[shares[0][0]] = page
        else:
            for installation_id in page:
                by_version[version_of(installation_id, plan.seed, shares)].append(installation_id)
        size = self._settings.batch_size
        chunks = [
            (plan.sends[version], ids[start : start + size])
            for version, ids in by_version.items()
            for start in range(0, len(ids), size)
        ]
        async with transaction(self._sessions) as session:
            moved = await session.execute(
                update(CampaignRun)
                .where(
                    CampaignRun.id == plan.run_id,
                    CampaignRun.pages == before.pages,
                    CampaignRun.lease_owner == self._owner,
                    CampaignRun.state == RunState.FANNING_OUT.value,
                )
                .values(
                    pages=after.pages,
                    cursor=after.cursor,
                    targeted=CampaignRun.targeted + len(page),
                    wave=after.wave,
                    zones_done=after.zones_done,
                    lease_until=now + self._lease,
                )
            )
            if not moved.rowcount:  # type: ignore[attr-defined]
                return False
            if plan.body.capping is not None and page:
                await session.execute(
                    upsert_insert(session, CampaignReceipt).on_conflict_do_update(
                        index_elements=["campaign_id", "installation_id"],
                        set_={"count": CampaignReceipt.count + 1},
                    ),
                    [
                        {"campaign_id": plan.campaign_id, "installation_id": i, "count": 1}
                        for i in page
                    ],
                )
            # Due at once: not_before and last_enqueued_at take their defaults (the delivery
            # clock, not the scheduler's).
            batch_ids = (
                list(
                    (
                        await session.execute(
                            _INSERT_BATCHES,
                            [
                                {"send_id": send_id, "recipients": {"installations": chunk}}
                                for send_id, chunk in chunks
                            ],
                        )
                    ).scalars()
                )
                if chunks
                else []
            )
        await self._queue.enqueue(
            [
                BatchJob(batch_id, recipients=len(chunk))
                for batch_id, (_, chunk) in zip(batch_ids, chunks, strict=True)
            ]
        )
        return True

    async def _close_fan_out(self, run_id: int) -> None:
        async with transaction(self._sessions) as session:
            await session.execute(
                update(CampaignRun)
                .where(CampaignRun.id == run_id, CampaignRun.state == RunState.FANNING_OUT.value)
                .values(state=RunState.DELIVERING.value, wave=None)
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


def _zone_filter(wave: list[str], default_zone: str) -> ColumnElement[bool]:
    in_wave = Installation.timezone.in_(wave)
    if default_zone in wave:
        return or_(in_wave, Installation.timezone.is_(None))
    return in_wave
