"""The fan-out: a run's audience written into the delivery outbox as batches, page by page
(keyset pagination over installations, one page per transaction), each page committed with the
run's new position (`Position`: pages written, cursor, local-time wave) and only while this
process holds the run's lease (docs/decisions/0010-campaign-fan-out.md). The campaign
scheduler (clarion.campaigns.tasks) takes and drops the leases and decides what to retry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import ColumnElement, insert, or_, select, update
from sqlalchemy.exc import CompileError, DataError, ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.models import App
from clarion.campaigns.models import Campaign, CampaignReceipt, CampaignRun, RunState
from clarion.campaigns.recurrence import EARLIEST_UTC_OFFSET, occurrence_end
from clarion.campaigns.schemas import CampaignBody
from clarion.capping import service as capping
from clarion.clock import Clock
from clarion.config import Settings
from clarion.db import transaction, upsert_insert
from clarion.delivery.models import BATCHES, Send
from clarion.errors import from_validation_errors
from clarion.queue import BatchJob, JobQueue, Lane
from clarion.sdk.models import Installation
from clarion.targeting import service as targeting

_INSERT_BATCHES = insert(BATCHES).returning(BATCHES.c.id, sort_by_parameter_order=True)
# How long the time zones of an app's installs are trusted (local-time waves).
_ZONES_TTL_SECONDS = 300.0


class RunFailed(Exception):
    """A run that cannot be sent, and would fail the same way at every retry: its body no
    longer validates (a targeting stored before a limit existed), its audience cannot be
    compiled, or the database refuses the statement itself."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:1024]


def reason_of(exc: BaseException) -> str:
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
class Position:
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
    # The app's caps of the campaign's labels, as they were when this fan-out (re)started.
    caps: list[capping.Cap]

    @property
    def shares(self) -> list[tuple[str | None, int]]:
        return list(self.body.versions.items())


class FanOut:
    """Writes runs' pages for one scheduler, as the lease holder `owner`."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        queue: JobQueue,
        settings: Settings,
        *,
        owner: str,
        clock: Clock,
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._settings = settings
        self._owner = owner
        self._clock = clock
        self._lease = timedelta(seconds=settings.fan_out_lease_seconds)
        self._page = settings.batch_size * 10
        self._zones: dict[int, tuple[float, set[str]]] = {}  # app id -> (read at, zones)

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
            caps=capping.caps_for(app.push_caps, automation=False, labels=body.labels),
        )

    async def run(self, run_id: int, position: Position) -> None:
        """Writes the run's pages from `position` until its audience is done, its next
        zones are not due yet, or the run is no longer this process's (stopped, taken over)."""
        try:
            plan = await self._plan(run_id)
        except (SQLAlchemyError, OSError):
            raise  # reading the run: may pass
        except Exception as exc:
            # Validating the body and compiling its targeting read nothing: what fails there
            # (a body stored before a limit, a query too deep to compile) fails at every retry.
            raise RunFailed(reason_of(exc)) from exc
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
            # One transaction reads the page and writes it. With caps, under their lock: what
            # the page query found under the caps stays so until its receipts commit, whoever
            # else spends them (two campaigns of one label at once, an automation).
            async with transaction(self._sessions) as session:
                await capping.lock_caps(session, app_id=plan.app.id, caps=plan.caps)
                page = await self._next_page(session, plan, zone_filter, position.cursor, now)
                after: Position | None = None
                if page:
                    after = Position(position.pages + 1, page[-1], wave, position.zones_done)
                elif local:  # this wave is done: the next starts from the first installation
                    done_zones = [*(position.zones_done or ()), *(wave or ())]
                    after = Position(position.pages + 1, 0, None, done_zones)
                batches = (
                    await self._write_page(session, plan, page, position, after, now)
                    if after is not None
                    else []
                )
            if after is None:
                await self._close_fan_out(run_id)
                return
            if batches is None:
                return  # stopped, or another process took the run over
            await self._queue.enqueue(batches)
            position = after

    async def _due_zones(
        self, app: App, wall_time: datetime, done: set[str], now: datetime
    ) -> list[str]:
        """Time zones of the app's installs whose wall clock has reached the campaign's time
        and which have not had their wave yet (installs with no zone use the app's)."""
        # "Never read" is its own case: treating it as "read at monotonic 0" made the zones
        # look fresh for the first 300 s after the machine booted, and fan out nothing.
        cached = self._zones.get(app.id)
        zones = cached[1] if cached is not None else set()
        if cached is None or self._clock.monotonic() - cached[0] > _ZONES_TTL_SECONDS:
            async with self._sessions() as session:
                zones = {
                    zone or app.default_timezone
                    for zone in await session.scalars(
                        select(Installation.timezone)
                        .where(Installation.app_id == app.id)
                        .distinct()
                    )
                }
            self._zones[app.id] = (self._clock.monotonic(), zones)
        return sorted(
            zone
            for zone in zones - done
            if wall_time.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC) <= now
        )

    async def _next_page(
        self,
        session: AsyncSession,
        plan: _Plan,
        zone_filter: ColumnElement[bool] | None,
        cursor: int,
        now: datetime,
    ) -> list[int]:
        query = select(Installation.id).where(plan.audience, Installation.id > cursor)
        if zone_filter is not None:
            query = query.where(zone_filter)
        # Installations that reached a cap of one of the campaign's labels are left out.
        under_caps = capping.under_caps_clause(
            app_id=plan.app.id, caps=plan.caps, installation_id=Installation.id, now=now
        )
        if under_caps is not None:
            query = query.where(under_caps)
        try:
            return list(await session.scalars(query.order_by(Installation.id).limit(self._page)))
        except (CompileError, DataError, ProgrammingError) as exc:
            # The statement itself is refused (too many parameters, a value the column cannot
            # take): the same statement would be refused again.
            raise RunFailed(reason_of(exc)) from exc

    async def _write_page(
        self,
        session: AsyncSession,
        plan: _Plan,
        page: list[int],
        before: Position,
        after: Position,
        now: datetime,
    ) -> list[BatchJob] | None:
        """One page's batches, receipts and the run's new position, in the caller's transaction
        (the one that read the page); the jobs to enqueue once it commits, or None when the run
        is no longer this process's to write (stopped, or taken over)."""
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
            return None
        if page:
            await capping.record_receipts(
                session, app_id=plan.app.id, caps=plan.caps, installation_ids=page, now=now
            )
        if plan.body.capping is not None and page:
            await session.execute(
                upsert_insert(session, CampaignReceipt).on_conflict_do_update(
                    index_elements=["campaign_id", "installation_id"],
                    set_={"count": CampaignReceipt.count + 1},
                ),
                [{"campaign_id": plan.campaign_id, "installation_id": i, "count": 1} for i in page],
            )
        chunks = self._chunks(plan, page)
        if not chunks:
            return []
        # Due at once: not_before and last_enqueued_at take their defaults (the delivery clock,
        # not the scheduler's).
        batch_ids = (
            await session.execute(
                _INSERT_BATCHES,
                [
                    {"send_id": send_id, "recipients": {"installations": chunk}}
                    for send_id, chunk in chunks
                ],
            )
        ).scalars()
        return [
            BatchJob(batch_id, recipients=len(chunk), lane=Lane.BULK)
            for batch_id, (_, chunk) in zip(batch_ids, chunks, strict=True)
        ]

    def _chunks(self, plan: _Plan, page: list[int]) -> list[tuple[int, list[int]]]:
        """The page's batches: (send id, installation ids), per A/B version."""
        shares = plan.shares
        by_version: dict[str | None, list[int]] = {version: [] for version, _ in shares}
        if len(shares) == 1:
            by_version[shares[0][0]] = page
        else:
            for installation_id in page:
                by_version[version_of(installation_id, plan.seed, shares)].append(installation_id)
        size = self._settings.batch_size
        return [
            (plan.sends[version], ids[start : start + size])
            for version, ids in by_version.items()
            for start in range(0, len(ids), size)
        ]

    async def _close_fan_out(self, run_id: int) -> None:
        async with transaction(self._sessions) as session:
            await session.execute(
                update(CampaignRun)
                .where(CampaignRun.id == run_id, CampaignRun.state == RunState.FANNING_OUT.value)
                .values(state=RunState.DELIVERING.value, wave=None)
            )


def _zone_filter(wave: list[str], default_zone: str) -> ColumnElement[bool]:
    in_wave = Installation.timezone.in_(wave)
    if default_zone in wave:
        return or_(in_wave, Installation.timezone.is_(None))
    return in_wave
