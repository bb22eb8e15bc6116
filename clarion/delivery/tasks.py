"""What runs in the background for delivery: the Deliverer takes a job's batches (a queue worker),
claims them with a lease it renews, resolves their recipients, sends them a chunk at a time and
records the outcomes in bulk as they come (a batch's progress with them); it sweeps the outbox
for batches no job names and for batches of dead workers, and when stopped hands back what it
holds (clarion.runtime starts and stops it). See docs/decisions/0032-leases-and-progress.md.

The only place that decides what an Outcome means: push_sent, token_deleted (and the token is
removed), push_error (reason verbatim), or a retry batch after an exponential backoff that
honours Retry-After and never goes past the send's time to live. See docs/architecture.md."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    String,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.models import App
from clarion.batching import TurnBatcher
from clarion.config import Settings
from clarion.custom_data.service import attributes_of
from clarion.db import UtcDateTime, is_postgres, is_retryable, rowcount, transaction, utcnow
from clarion.delivery.content import build_notification, language_key, personalised_fields
from clarion.delivery.journal import AnswerJournal, journal_key
from clarion.delivery.liveness import LivenessLock, gone
from clarion.delivery.models import BATCHES, BatchStatus, DeliveryBatch, Send, SendKind
from clarion.delivery.personalisation import TemplateLimitError
from clarion.delivery.pool import ProviderPool
from clarion.delivery.providers.base import DeliveryResult, Outcome, ProviderConfigError
from clarion.delivery.service import STOPPED, Recipient, resolve_recipients
from clarion.events.models import PushEventKind
from clarion.events.service import PushEventRow, SendEvents, record_push_events
from clarion.metrics import note_recording
from clarion.queue import BatchJob, JobQueue, Lane
from clarion.sdk.models import Installation

log = logging.getLogger(__name__)


class _End(Enum):
    FINISH = "finish"  # every recipient has its outcome: the batch is done
    HAND_BACK = "hand back"  # the worker is stopping: the others go to another worker


# The first part of a batch's transaction: the batches still held (leased to this worker and
# sending) renewed and locked, so that no other worker takes one over before the commit.
_HOLD = (
    update(BATCHES)
    .where(
        BATCHES.c.id.in_(bindparam("ids", expanding=True)),
        BATCHES.c.status == BatchStatus.SENDING.value,
        BATCHES.c.lease_owner == bindparam("owner"),
    )
    # Never shortened: a recording that read the clock before a renewal commits after it.
    .values(
        lease_until=case(
            (BATCHES.c.lease_until > bindparam("lease"), BATCHES.c.lease_until),
            else_=bindparam("lease"),
        )
    )
    .returning(BATCHES.c.id)
)

# Statements a job runs, built once with their values bound at execution: built per job, the
# claim and the three loads cost ~0.6 ms of a one-recipient job's ~4.3 ms of worker CPU
# (py-spy on a backlog of transactional sends, one job each), the query objects alone.
# The claim: the given batches that are due and free (pending, or sending with an expired lease).
_CLAIM = (
    update(BATCHES)
    .where(
        BATCHES.c.id.in_(bindparam("ids", expanding=True)),
        BATCHES.c.not_before <= bindparam("now", type_=UtcDateTime),
        or_(
            BATCHES.c.status == BatchStatus.PENDING.value,
            (BATCHES.c.status == BatchStatus.SENDING.value)
            & (BATCHES.c.lease_until < bindparam("now", type_=UtcDateTime)),
        ),
    )
    .values(
        status=BatchStatus.SENDING.value,
        lease_until=bindparam("lease", type_=UtcDateTime),
        lease_owner=bindparam("owner", type_=String()),
        # Taken over from a worker that died holding it after it began sending it (its
        # progress is written before its first request goes out): what that worker sent
        # without recording it is unknown. (SET reads the old row.)
        outcome_unknown=case(
            (
                (BATCHES.c.status == BatchStatus.SENDING.value) & BATCHES.c.progress.is_not(None),
                true(),
            ),
            else_=BATCHES.c.outcome_unknown,
        ),
    )
    .returning(BATCHES.c.id)
)
_BATCHES_BY_ID = (
    select(DeliveryBatch)
    .where(DeliveryBatch.id.in_(bindparam("ids", expanding=True)))
    .order_by(DeliveryBatch.id)
)
_SENDS_BY_ID = select(Send).where(Send.id.in_(bindparam("ids", expanding=True)))
_APPS_BY_ID = select(App).where(App.id.in_(bindparam("ids", expanding=True)))

# What a flush records of each batch (executemany: one row per batch): its counters grow by
# what was recorded, its progress is written whole (a bit per recipient: 125 bytes for 1,000),
# and a batch at its end is done or handed back (pending, lease cleared, progress kept).
_RECORD = (
    update(BATCHES)
    .where(BATCHES.c.id == bindparam("batch_id"), BATCHES.c.lease_owner == bindparam("owner"))
    .values(
        status=bindparam("to_status"),
        finished_at=bindparam("finished", type_=UtcDateTime),
        lease_until=case(  # never shortened (see _HOLD); cleared at the batch's end (None)
            (
                BATCHES.c.lease_until > bindparam("lease", type_=UtcDateTime),
                BATCHES.c.lease_until,
            ),
            else_=bindparam("lease", type_=UtcDateTime),
        ),
        lease_owner=bindparam("to_owner", type_=String()),
        last_enqueued_at=func.coalesce(
            bindparam("enqueued", type_=UtcDateTime), BATCHES.c.last_enqueued_at
        ),
        progress=bindparam("bits", type_=LargeBinary),
        targeted=BATCHES.c.targeted + bindparam("add_targeted"),
        sent=BATCHES.c.sent + bindparam("add_sent"),
        failed=BATCHES.c.failed + bindparam("add_failed"),
        tokens_deleted=BATCHES.c.tokens_deleted + bindparam("add_deleted"),
        resent=BATCHES.c.resent + bindparam("add_resent"),
    )
)

# With its first outcomes, a batch given as custom ids, install ids or advertising ids is
# rewritten as the installations and tokens they resolved to: its progress bits number them.
_FREEZE = (
    update(BATCHES)
    .where(BATCHES.c.id == bindparam("batch_id"))
    .values(recipients=bindparam("resolved", type_=BATCHES.c.recipients.type))
)

_GIVEN = ("custom_ids", "install_ids", "advertising_ids")

# A recording commits without waiting for its WAL to reach the disk (PostgreSQL). It is visible
# to every session at once, and only a crash of PostgreSQL itself (not of a worker) can lose it
# (the last ~0.6 s: 3 x wal_writer_delay), which makes those outcomes' batches go back to an
# earlier progress: sent again and counted as re-sent, never lost. A later commit that waits
# (a job enqueued, a campaign completed) flushes the WAL before it, so nothing durable ever
# follows a lost recording. The first progress of a batch is the exception: it says that the
# batch may have been sent (a take-over then counts re-sends), so it waits for the disk before
# the batch's first request goes out.
_NO_DISK_WAIT = text("SET LOCAL synchronous_commit = off")

# How many recordings in a row may fail on a deadlock or a lost connection before the batches
# waiting for their end are failed (handed back): at progress_flush_seconds apart, ~0.1 s.
_RETRYABLE_FLUSHES = 5

# Groups of devices (one per environment, language and rendered text) a batch sends at once:
# a personalised push is often a group of one, and a batch of 1,000 such groups sent one after
# the other waits 1,000 round trips (measured: 2.9 s p50 late for 1,000 automation pushes/s,
# 0.5 s together); all 1,000 at once, in each of a worker's 32 jobs, hold 32,000 tasks.
_GROUPS_AT_ONCE = 250

# A batch's journal left behind (finished by a worker of another machine, or its send deleted)
# is removed after a day: a take-over comes seconds after a death, a handed-back batch's turn
# minutes after.
_JOURNAL_KEEP_SECONDS = 86_400.0


@dataclass(slots=True)
class _Tally:
    sent: int = 0
    failed: int = 0
    deleted: int = 0
    resent: int = 0
    recorded: int = 0


def retry_delay(attempt: int, retry_after: float | None, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter (half to full), never shorter than Retry-After."""
    backoff = min(cap, base * 2.0**attempt) * (0.5 + random.random() / 2)
    return max(backoff, retry_after or 0.0)


def _positions(recipients: dict[str, Any]) -> dict[int | str, int]:
    """Each recipient's position in a resolved batch: its installations, then its tokens."""
    positions: dict[int | str, int] = {}
    installations = recipients.get("installations", ())
    for index, pk in enumerate(installations):
        positions.setdefault(pk, index)
    for index, token in enumerate(recipients.get("tokens", ()), start=len(installations)):
        positions.setdefault(token, index)
    return positions


@dataclass(slots=True)
class _Held:
    """A batch this worker holds: who it reaches, and what of it is recorded."""

    id: int
    attempt: int
    send: Send
    app: App
    trigger_events: dict[str, Any] | None
    # Taken over from a dead worker (or a retry of unanswered requests): accepted = re-sent,
    # for every recipient, or (a take-over that found the batch's journal) for `unanswered`.
    resend: bool
    raw_tokens: frozenset[str]
    journal_key: str  # its file in the answer journal (hashed once: written at every chunk)
    positions: dict[int | str, int]
    done: bytearray  # a bit per position: its outcome is recorded
    frozen: dict[str, Any] | None  # the resolved recipients to write with the first outcomes
    events: SendEvents  # its devices' event rows
    pending: list[tuple[Recipient, DeliveryResult]] = field(default_factory=list)
    # When the pending outcomes came in (loop time, how many): measured until their commit.
    answered: list[tuple[float, int]] = field(default_factory=list)
    # Transient failures (429, 5xx, unanswered): one retry batch at the batch's end.
    deferred: list[tuple[Recipient, DeliveryResult]] = field(default_factory=list)
    end: _End | None = None
    ended: asyncio.Future[list[BatchJob]] | None = None
    lost: bool = False
    on_wire: bool = False  # some request of it was sent
    order: int = 0  # held by this worker before those of higher order: sent first
    # Set once its progress is written (before its first request goes out): a worker that
    # takes it over then knows some of it may have been sent.
    started: asyncio.Future[None] | None = None
    # The room its pending outcomes hold on the wire, given back once they are recorded.
    slots: list[tuple[_WireSlots, int]] = field(default_factory=list)
    # Positions a dead worker put on the wire and got no answer for (its journal): with
    # `resend`, the only ones whose pushes are sent again. None: all of them may be.
    unanswered: set[int] | None = None

    def position(self, recipient: Recipient) -> int | None:
        key: int | str | None = (
            recipient.token if recipient.token in self.raw_tokens else recipient.installation_id
        )
        return None if key is None else self.positions.get(key)

    def recorded(self, recipient: Recipient) -> bool:
        index = self.position(recipient)
        return index is not None and bool(self.done[index >> 3] & (1 << (index & 7)))

    def resent_if_accepted(self, recipient: Recipient) -> bool:
        """Whether an accepted push to this recipient is one sent again."""
        if not self.resend:
            return False
        return self.unanswered is None or self.position(recipient) in self.unanswered


def _mark(bits: bytearray, index: int | None) -> None:
    if index is not None:
        bits[index >> 3] |= 1 << (index & 7)


class _WireSlots:
    """The requests a worker has on the wire without an answer it can rely on, per provider: a
    chunk of devices takes room before it goes on the wire and gives it back once its answers
    are in the batch's journal (journal.py), or, with no journal, once they are committed. So a
    kill -9 sends again at most this many per provider, whatever the load. Held until the
    commit in all cases, the room also had to cover the recording's lag (351 ms from answer to
    commit on a loaded 2-core machine), and what a kill sent again was the whole window:
    1,002 of 100,000 for 4 kills with 256 to 400 in it (decision 0047).

    The limit follows the provider's round trip (Little's law): enough requests to keep
    `delivery_target_rate` pushes/s going, never fewer than `delivery_in_flight` (128) nor more
    than `delivery_on_wire` (2,000). The round trip is the least of the last 100 chunks': each
    one also counts the time the worker's own loop took to get to it, which grows with what is
    in flight, so an average sized the window up to its ceiling on a saturated machine (110-190
    ms against a simulator answering at once), while the least stays near the provider's own.
    A fixed 256 capped a worker at 1,796 pushes/s against a simulator answering 50 ms late.

    The batch claimed first is served first: its batches are sent one after the other rather
    than all at once, so a recording touches a few batches (all 32 a worker holds cost 73-79 us
    of CPU a push on PostgreSQL, 61-70 this way, 60-65 before progress was recorded) and a stop
    or a kill leaves few half-sent.
    Closed when the worker stops: what waits is not sent."""

    # Chunks whose round trips the least is taken over: ~0.5 s of sending at 6,400 pushes/s,
    # 1.25 s at the floor against a provider 50 ms away.
    _RECENT = 100
    _ENOUGH = 16  # 4 rounds of the floor's 4 chunks: 0.2 s against a provider 50 ms away

    def __init__(
        self, floor: int, ceiling: int, target_rate: float, starved: Callable[[], None]
    ) -> None:
        self._floor = floor
        self._ceiling = max(floor, ceiling)
        self._target_rate = target_rate
        self._starved = starved  # called when a chunk waits: what is sent should be recorded
        self.size = floor
        self._free = floor
        # The recent chunks: when each was answered (loop time), its round trip, its devices.
        self._recent: deque[tuple[float, float, int]] = deque(maxlen=self._RECENT)
        # Kept as chunks come and go rather than summed over the 100 at every answer (~1 µs
        # a push): their devices, and the least round trip (the chunks that may still become
        # the least, in order: each with its number and trip, the trips increasing).
        self._recent_devices = 0
        self._answers = 0
        self._least: deque[tuple[int, float]] = deque()
        self._waiting: list[tuple[tuple[int, int], int, asyncio.Future[bool]]] = []
        self._asked = 0  # ties broken in the order chunks asked
        self._closed = False

    def answered(self, at: float, seconds: float, devices: int) -> None:
        """A chunk of `devices` answered at loop time `at`, `seconds` after it was written:
        the limit follows the recent chunks once there are enough of them (the first ones
        include the connection's set-up: 0.1-0.45 s measured, which sized a window at its
        ceiling for the worker's first second)."""
        recent = self._recent
        if len(recent) == self._RECENT:
            self._recent_devices -= recent[0][2]
        recent.append((at, seconds, devices))
        self._recent_devices += devices
        self._answers += 1
        least_trips = self._least
        while least_trips and least_trips[-1][1] >= seconds:
            least_trips.pop()
        least_trips.append((self._answers, seconds))
        if least_trips[0][0] <= self._answers - self._RECENT:
            least_trips.popleft()
        if len(recent) < self._ENOUGH:
            return
        least = least_trips[0][1]
        # Twice the rate reached lets the window double each time it is what limits sending
        # (a distant provider); a worker short of CPU reaches a rate its floor already
        # carries, and a larger window would only queue requests a kill sends again.
        span = at - recent[0][0]
        reached = self._recent_devices / span if span > 0 else self._target_rate
        rate = min(self._target_rate, 2 * reached)
        wanted = min(self._ceiling, max(self._floor, round(rate * least)))
        if wanted != self.size:
            self._free += wanted - self.size
            self.size = wanted
            self.give(0)

    async def take(self, n: int, *, order: int) -> bool:
        """Waits for room for n requests; False once the worker stops."""
        if self._closed:
            return False
        if not self._waiting and self._free >= n:
            self._free -= n
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._starved()
        self._asked += 1
        heapq.heappush(self._waiting, ((order, self._asked), n, waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            # Granted meanwhile: the room goes back; still waiting: skipped when its turn comes.
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.give(n)
            raise

    def give(self, n: int) -> None:
        self._free += n
        while self._waiting and self._free >= self._waiting[0][1]:
            _, wanted, waiter = heapq.heappop(self._waiting)
            if not waiter.done():
                self._free -= wanted
                waiter.set_result(True)

    def close(self) -> None:
        self._closed = True
        while self._waiting:
            _, _, waiter = heapq.heappop(self._waiting)
            if not waiter.done():
                waiter.set_result(False)


def _send_log_fields(send: Send) -> dict[str, Any]:
    """What a delivery's log lines carry (clarion.logs): its app and send, never a device's
    token (given in `extra` rather than a log context: the progress flusher, a task started
    from within a send, would keep a context's fields for every later send)."""
    fields: dict[str, Any] = {"app_id": send.app_id, "send_token": send.token}
    if send.campaign_token:
        fields["campaign_token"] = send.campaign_token
    return fields


class Deliverer:
    """One per worker process (`worker_id`, random): claims batches with a lease that it renews
    while it is alive, sends their recipients a chunk at a time within delivery_in_flight,
    records outcomes as they come (every progress_flush_seconds or progress_flush_results), and
    when stopped hands back what it has not sent. Every write to a claimed batch checks that
    this worker still holds it; a worker that lost a batch (its lease expired and another took
    it over) records nothing more for it. See docs/decisions/0032-leases-and-progress.md."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        pool: ProviderPool,
        queue: JobQueue,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._pool = pool
        self._queue = queue
        self._settings = settings
        self._clock = clock
        self.worker_id = str(uuid.uuid4())
        self._lease = timedelta(seconds=settings.delivery_lease_seconds)
        # On PostgreSQL, held from the first claim to the end (liveness.py): a worker whose lock
        # is free and whose leases were not renewed for `_quiet` is gone, its batches taken
        # over then rather than when their lease runs out.
        self._liveness = (
            None
            if settings.is_sqlite
            else LivenessLock(settings.resolved_database_url, self.worker_id)
        )
        self._liveness_checked = asyncio.Lock()
        self._journal = AnswerJournal(settings.delivery_journal_folder)
        # A live worker renews every delivery_lease_renew_seconds (the batches it sends at
        # every recording, 20 ms): quiet for 1.5 renewals, it is late, or gone.
        self._quiet = timedelta(seconds=1.5 * settings.delivery_lease_renew_seconds)
        # The batches leased to this worker (from the claim's commit on, renewed), and those
        # of them being sent.
        self._leased: set[int] = set()
        self._held: dict[int, _Held] = {}
        self._holds = 0
        # One budget per provider (platform and APNs environment): a slow one does not hold
        # the others' requests back.
        self._wires: dict[tuple[str, bool], _WireSlots] = {}
        # Small enough that a chunk's outcomes come back soon, large enough that a provider
        # call (payload, headers, JWT) is paid for many devices: 32 with 256 on the wire.
        self._chunk = max(1, min(32, settings.delivery_in_flight // 4))
        self._unflushed = 0
        # Recordings in a row that failed on a deadlock or a lost connection (is_retryable):
        # the batches at their end keep waiting for the next one rather than fail, since a
        # failed end hands the batch back and its unrecorded outcomes would be sent again
        # (40 pushes twice in bench.scaled_out's 2 + 2 run, from 49 deadlocks).
        self._retryable_failures = 0
        self._wake = asyncio.Event()  # something to record
        self._now = asyncio.Event()  # ... without waiting for progress_flush_seconds
        self._flusher: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[Any]] = set()
        self._passes = {lane: TurnBatcher(self._deliver_pass) for lane in Lane}
        self._idle = asyncio.Event()
        self._idle.set()
        self.stopping = False

    async def deliver_batches(self, batch_ids: list[int], lane: Lane = Lane.PROMPT) -> None:
        """Deliver the batches of one job: those already done, held by a live worker or not
        due yet are skipped; the others are claimed, sent together and recorded as they go.
        The jobs of a lane that start in the same turn of the event loop (pgqueuer hands a
        worker up to half its slots at once) share one pass: one claim and one load for all
        (a backlog of one-recipient transactional jobs cost ~3.9 ms of worker CPU a job, most
        of it those five queries). Lanes pass apart, so that a transactional job never waits
        for a campaign's batch to end."""
        if self.stopping:
            await self._hand_back_unclaimed(batch_ids)
            return
        with self._delivering():
            await self._passes[lane].submit(*batch_ids)

    @contextlib.contextmanager
    def _delivering(self) -> Iterator[None]:
        """The current task counts as a delivery while inside: stop() waits for it (_idle) and
        abort() cancels it."""
        task = asyncio.current_task()
        if task is not None:
            self._deliveries.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            if task is not None:
                self._deliveries.discard(task)
            if not self._deliveries:
                self._idle.set()

    async def _hand_back_unclaimed(self, batch_ids: list[int]) -> None:
        # A job dequeued before the stop: its batches go back to the queue for another
        # worker, unclaimed (no dedupe key: this job still holds its own).
        await self._queue.enqueue([BatchJob(i, after=None) for i in batch_ids])

    async def _deliver_pass(self, batch_ids: list[int]) -> None:
        """The batches of the jobs of one pass (deliver_batches), in the pass's own task."""
        if self.stopping:
            await self._hand_back_unclaimed(batch_ids)
            return
        claimed: list[int] = []
        with self._delivering():  # abort() cancels the pass with its jobs
            try:
                await self._alive(check=False)
                claimed = await self._claim(sorted(set(batch_ids)))
                if not claimed:
                    return
                try:
                    retries = await self._deliver_claimed(claimed)
                except Exception as exc:
                    # Not a provider outcome (those are results): the database or a bug. Hand
                    # the batches back now rather than leave them leased, and count the attempt
                    # so they cannot loop.
                    log.exception(
                        "delivery of batches %s failed; releasing them for a retry", claimed
                    )
                    await self._release(claimed, exc)
                    raise
                await self._queue.enqueue(retries)
            finally:
                self._leased.difference_update(claimed)  # (each is let go on its way already)

    async def _alive(self, *, check: bool) -> None:
        """This worker's liveness lock held (taken before its first claim; `check`: its
        connection checked, and the lock taken again if PostgreSQL ended it)."""
        if self._liveness is None or (self._liveness.held and not check):
            return
        async with self._liveness_checked:
            await self._liveness.hold()

    async def _claim(self, batch_ids: list[int]) -> list[int]:
        now = self._clock()
        async with transaction(self._sessions) as session:
            claimed = await session.scalars(
                _CLAIM,
                {"ids": batch_ids, "now": now, "lease": now + self._lease, "owner": self.worker_id},
            )
            ids = sorted(claimed)
            self._leased.update(ids)  # renewed from the commit on
            return ids

    def _still_mine(self, batch_ids: list[int]) -> ColumnElement[bool]:
        """Those of these batches this worker still holds (being sent, its lease)."""
        return and_(
            BATCHES.c.id.in_(batch_ids),
            BATCHES.c.status == BatchStatus.SENDING.value,
            BATCHES.c.lease_owner == self.worker_id,
        )

    async def _close_cancelled(self, session: AsyncSession, batch_ids: list[int]) -> None:
        """In the caller's session: on SQLite a second session would wait for the one connection
        that the caller holds (docs/conventions.md, "one session at a time")."""
        await session.execute(
            update(BATCHES)
            .where(self._still_mine(batch_ids))
            .values(
                status=BatchStatus.DONE.value,
                finished_at=self._clock(),
                lease_until=None,
                lease_owner=None,
                last_reason=STOPPED,
            )
        )
        await session.commit()
        self._leased.difference_update(batch_ids)

    async def _release(self, batch_ids: list[int], error: Exception) -> None:
        """Hand failed batches back for a later attempt; at the last attempt, give them up
        (done, the error kept as the batch's last_reason) so that a poison batch cannot loop.
        The progress recorded is kept; what was sent and not recorded is an unknown outcome."""
        now = self._clock()
        sent = [i for i in batch_ids if (held := self._held.get(i)) is not None and held.on_wire]
        for batch_id in batch_ids:
            held = self._held.pop(batch_id, None)
            for wire, n in held.slots if held is not None else ():
                wire.give(n)
            if held is not None:
                self._journal.let_go(held.journal_key)  # for the next attempt
            self._leased.discard(batch_id)
        give_up = BATCHES.c.attempt + 1 >= self._settings.retry_max_attempts
        async with transaction(self._sessions) as session:
            await session.execute(
                update(BATCHES)
                .where(self._still_mine(batch_ids))
                .values(
                    status=case((give_up, BatchStatus.DONE.value), else_=BatchStatus.PENDING.value),
                    finished_at=case((give_up, now), else_=None),
                    lease_until=None,
                    lease_owner=None,
                    attempt=BATCHES.c.attempt + 1,
                    not_before=now + timedelta(seconds=self._settings.retry_base_seconds),
                    last_reason=f"InternalError: {error!r}"[:1024],
                    outcome_unknown=case(
                        (BATCHES.c.id.in_(sent), true()), else_=BATCHES.c.outcome_unknown
                    ),
                )
            )

    async def _deliver_claimed(self, batch_ids: list[int]) -> list[BatchJob]:
        async with self._sessions() as session:
            batches = (await session.scalars(_BATCHES_BY_ID, {"ids": batch_ids})).all()
            sends = {
                send.id: send
                for send in await session.scalars(
                    _SENDS_BY_ID, {"ids": sorted({batch.send_id for batch in batches})}
                )
            }
            # Batches of a send stopped after they were claimed (or retries written after the
            # stop) close unsent.
            cancelled = [b.id for b in batches if sends[b.send_id].cancelled_at is not None]
            if cancelled:
                await self._close_cancelled(session, cancelled)
                closed = set(cancelled)
                batches = [b for b in batches if b.id not in closed]
                if not batches:
                    return []
            apps = {
                app.id: app
                for app in await session.scalars(
                    _APPS_BY_ID, {"ids": sorted({send.app_id for send in sends.values()})}
                )
            }
            targets = [
                (batch, sends[batch.send_id], apps[sends[batch.send_id].app_id])
                for batch in batches
            ]
            work = [
                (held, [r for r in recipients if not held.recorded(r)])
                for held, recipients in (
                    (self._hold(batch, send, app, recipients), recipients)
                    for (batch, send, app), recipients in zip(
                        targets, await resolve_recipients(session, targets), strict=True
                    )
                )
            ]
            for index, (held, recipients) in enumerate(work):
                if held.resend and not held.lost:
                    work[index] = (held, await self._replay_journal(held, recipients))
            # Personalised sends need their users' attributes: one query per such batch. A
            # Dev-key send renders with none (the defaults): its recipients are debug installs,
            # which claim any custom id they like, so rendering their profile would hand the
            # app's Custom Data to whoever holds the Dev key (docs/api-keys.md).
            attributes: dict[int, dict[str, dict[str, Any]]] = {}
            for held, recipients in work:
                if held.send.content.get("personalised") and held.send.dev_only:
                    attributes[held.id] = {}
                elif held.send.content.get("personalised"):
                    attributes[held.id] = await attributes_of(
                        session,
                        app_id=held.app.id,
                        custom_ids=[r.custom_id for r in recipients if r.custom_id],
                    )
        now = self._clock()
        complete = await asyncio.gather(
            *(
                self._send(
                    held,
                    recipients,
                    now,
                    attributes.get(held.id),
                    held.trigger_events,
                )
                for held, recipients in work
            )
        )
        endings: list[asyncio.Future[list[BatchJob]]] = []
        for (held, _), all_sent in zip(work, complete, strict=True):
            if held.lost:
                continue
            held.end = _End.FINISH if all_sent else _End.HAND_BACK
            held.ended = asyncio.get_running_loop().create_future()
            endings.append(held.ended)
        self._record_soon(now=True)
        retries: list[BatchJob] = []
        for ending in endings:
            retries.extend(await ending)
        return retries

    def _hold(
        self, batch: DeliveryBatch, send: Send, app: App, recipients: list[Recipient]
    ) -> _Held:
        """A claimed batch, from now on renewed and recorded by this worker."""
        wanted = batch.recipients
        raw_tokens = frozenset(wanted.get("tokens", ()))
        frozen = None
        if any(wanted.get(kind) for kind in _GIVEN):
            # Positions need a list that does not change between attempts: the installations
            # and tokens the identifiers resolve to now (what a retry batch holds too).
            frozen = {
                "installations": [
                    r.installation_id
                    for r in recipients
                    if r.token not in raw_tokens and r.installation_id is not None
                ],
                "tokens": [r.token for r in recipients if r.token in raw_tokens],
            }
        positions = _positions(frozen or wanted)
        size = (max(positions.values(), default=-1) + 8) // 8
        done = bytearray(batch.progress or b"").ljust(size, b"\0")
        held = _Held(
            id=batch.id,
            attempt=batch.attempt,
            send=send,
            app=app,
            trigger_events=wanted.get("events"),
            resend=batch.outcome_unknown,
            raw_tokens=raw_tokens,
            journal_key=journal_key(batch.id, send.token),
            positions=positions,
            done=done,
            frozen=frozen,
            # The send token rides on campaign events too: it names the A/B version of the send.
            events=SendEvents(
                app_id=app.id,
                platform=app.platform,
                send_token=send.token,
                group_id=send.group_id,
                campaign_token=send.campaign_token,
            ),
        )
        self._holds += 1
        held.order = self._holds
        if batch.id in self._leased:
            self._held[batch.id] = held
        else:
            held.lost = True  # taken over meanwhile (a renewal found it gone): not sent here
        return held

    async def _replay_journal(self, held: _Held, recipients: list[Recipient]) -> list[Recipient]:
        """A batch taken over: the answers its journal on this machine holds (a worker killed
        before recording them) are recorded as they were, not sent again, and only the
        positions it put on the wire without an answer count as re-sent. Returns the
        recipients left to send."""
        journaled = await asyncio.to_thread(self._journal.read, held.journal_key)
        if journaled is None:
            return recipients
        if not journaled.resend:
            held.unanswered = journaled.unanswered
        left: list[Recipient] = []
        answered: list[tuple[Recipient, DeliveryResult]] = []
        for recipient in recipients:
            index = held.position(recipient)
            result = None if index is None else journaled.answers.get(index)
            if result is None:
                left.append(recipient)
            else:
                answered.append((recipient, result))
        if answered:
            log.info(
                "batch %s taken over: %d answers from its journal recorded, not sent again",
                held.id,
                len(answered),
                extra={"fields": {**_send_log_fields(held.send), "batch_id": held.id}},
            )
            self._results(held, answered)
        return left

    async def _send(
        self,
        held: _Held,
        recipients: Sequence[Recipient],
        now: datetime,
        attributes: dict[str, dict[str, Any]] | None = None,
        events: dict[str, dict[str, Any]] | None = None,
    ) -> bool:
        """Sends to these recipients of a held batch, their results recorded as they come.
        `attributes`: for a personalised send, each custom user id's attributes; `events`: for
        an automation's, the event that triggered each installation's push (by its pk).
        Returns whether every recipient was sent (not when the worker stops first)."""
        send, app = held.send, held.app
        if send.expires_at is not None and now >= send.expires_at:
            self._results(
                held, [(r, DeliveryResult(Outcome.FAILED, reason="Expired")) for r in recipients]
            )
            return True
        renders: list[tuple[str | None, ...] | DeliveryResult | None] = [None] * len(recipients)
        if attributes is not None:
            # Up to batch_size (1,000) renders of up to ~13 ms each (the template limits):
            # CPU work, kept off the event loop.
            renders = await asyncio.to_thread(
                _personalise, send.content, recipients, attributes, events or {}
            )
        # Devices that share an environment, a language and (personalised sends) the same
        # rendered texts get one rendering of the payload.
        groups: dict[tuple[bool, str, tuple[str | None, ...] | None], list[int]] = defaultdict(list)
        at_once: list[tuple[Recipient, DeliveryResult]] = []
        # Read once, not per recipient (ORM attributes); a batch has a few languages.
        web, content = app.platform == "web", send.content
        languages: dict[str | None, str] = {}
        for index, (recipient, rendered) in enumerate(zip(recipients, renders, strict=True)):
            if web and recipient.p256dh is None:
                at_once.append(
                    (recipient, DeliveryResult(Outcome.FAILED, reason="UnknownSubscription"))
                )
            elif isinstance(rendered, DeliveryResult):
                at_once.append((recipient, rendered))
            else:
                language = languages.get(recipient.language)
                if language is None:
                    language = languages[recipient.language] = language_key(
                        content, recipient.language
                    )
                groups[(recipient.sandbox, language, rendered)].append(index)
        if at_once:
            self._results(held, at_once)
        # Groups go out in chunks of self._chunk devices, each chunk once it has room on the
        # wire, _GROUPS_AT_ONCE groups at a time.
        chunks = [
            (sandbox, rendered, indexes[start : start + self._chunk])
            for (sandbox, _, rendered), indexes in groups.items()
            for start in range(0, len(indexes), self._chunk)
        ]
        complete = True
        for start in range(0, len(chunks), _GROUPS_AT_ONCE):
            sent = await asyncio.gather(
                *(
                    self._send_chunk(held, recipients, indexes, sandbox, rendered)
                    for sandbox, rendered, indexes in chunks[start : start + _GROUPS_AT_ONCE]
                )
            )
            complete = complete and all(sent)
        return complete

    async def _send_chunk(
        self,
        held: _Held,
        recipients: Sequence[Recipient],
        indexes: list[int],
        sandbox: bool,
        rendered: tuple[str | None, ...] | None,
    ) -> bool:
        wire = self._wire(held.app.platform, sandbox)
        n = len(indexes)
        if held.lost or not await wire.take(n, order=held.order):
            return False
        try:
            if held.lost:
                wire.give(n)
                return False
            if held.started is None:
                held.started = asyncio.get_running_loop().create_future()
                self._record_soon(now=True)
            await asyncio.shield(held.started)
            if held.lost:
                wire.give(n)
                return False
            held.on_wire = True
            # Journaled before the requests are written, and their answers the moment they
            # come: a worker that takes the batch over after a kill sends again only these
            # positions' unanswered requests (journal.py).
            positions = [p for i in indexes if (p := held.position(recipients[i])) is not None]
            self._journal.on_wire(
                held.journal_key, positions, resend=held.resend and held.unanswered is None
            )
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            answer = await self._send_group(
                held.app, held.send, recipients, indexes, sandbox, rendered
            )
            journaled = len(positions) == n and self._journal.answered(
                held.journal_key, positions, answer
            )
            answered_at = loop.time()
            wire.answered(answered_at, answered_at - sent_at, n)
        except BaseException:
            wire.give(n)
            raise
        results = [(recipients[i], r) for i, r in zip(indexes, answer, strict=True)]
        if held.lost or journaled:
            wire.give(n)  # a kill would not send these again: room for the next requests
        else:
            held.slots.append((wire, n))  # room given back once they are committed
        if not held.lost:
            self._results(held, results)
        return True

    async def _send_group(
        self,
        app: App,
        send: Send,
        recipients: Sequence[Recipient],
        indexes: list[int],
        sandbox: bool,
        rendered: tuple[str | None, ...] | None,
    ) -> list[DeliveryResult]:
        try:
            provider = self._pool.provider_for(app, sandbox=sandbox)
        except ProviderConfigError as exc:
            return [DeliveryResult(Outcome.FAILED, reason=f"InvalidCredentials: {exc}")] * len(
                indexes
            )
        if provider is None:
            reason = f"NotConfigured: no {app.platform} credentials"
            return [DeliveryResult(Outcome.FAILED, reason=reason)] * len(indexes)
        notification = build_notification(send, recipients[indexes[0]].language, rendered)
        try:
            return await provider.send(notification, [recipients[i].device() for i in indexes])
        except Exception as exc:
            # A provider bug must not wedge the batch: retry it, and after the last attempt the
            # devices get push_error with this reason instead of looping forever.
            log.exception(
                "provider %s failed on send %s",
                app.platform,
                send.token,
                extra={"fields": _send_log_fields(send)},
            )
            return [DeliveryResult(Outcome.RETRY, reason=f"InternalError: {exc!r}")] * len(indexes)

    def _wire(self, platform: str, sandbox: bool) -> _WireSlots:
        wire = self._wires.get((platform, sandbox))
        if wire is None:
            settings = self._settings
            wire = self._wires[(platform, sandbox)] = _WireSlots(
                settings.delivery_in_flight,
                settings.delivery_on_wire,
                settings.delivery_target_rate,
                self._starving,
            )
            if self.stopping:
                wire.close()
        return wire

    def _starving(self) -> None:
        # Room held until a commit comes back sooner with one; with a journal, room comes back
        # with the answers, and a recording at every wait cost 80-100 small transactions a
        # second at 20,000 pushes/s.
        self._record_soon(now=not self._journal.enabled)

    # Recording -----------------------------------------------------------------------------

    def _results(self, held: _Held, results: list[tuple[Recipient, DeliveryResult]]) -> None:
        if held.lost:
            return
        held.pending.extend(results)
        held.answered.append((asyncio.get_running_loop().time(), len(results)))
        self._unflushed += len(results)
        self._record_soon(now=self._unflushed >= self._settings.progress_flush_results)

    def _record_soon(self, *, now: bool) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name="delivery progress")
        self._wake.set()
        if now:
            self._now.set()

    async def _flush_forever(self) -> None:
        """Records what came in, every progress_flush_seconds or progress_flush_results
        outcomes, and at once a batch's end. One flush at a time: what comes in meanwhile goes
        into the next one."""
        while True:
            await self._wake.wait()
            if not self._now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._now.wait(), timeout=self._settings.progress_flush_seconds
                    )
            self._wake.clear()
            self._now.clear()
            try:
                await self._flush()
            except Exception:
                log.exception("recording delivery outcomes failed; trying again")
                await asyncio.sleep(self._settings.progress_flush_seconds)
                self._wake.set()

    async def _flush(self) -> None:
        """One transaction: the outcomes that came in since the last flush (push events, dead
        tokens removed, the batches' counters and progress), the batches at their end done or
        handed back with their retry batch. Only for the batches this worker still holds."""
        batches = [
            h
            for h in self._held.values()
            if not h.lost and (h.pending or h.end or (h.started and not h.started.done()))
        ]
        if not batches:
            return
        taken = {h.id: h.pending for h in batches}
        slots = {h.id: h.slots for h in batches}
        answered = {h.id: h.answered for h in batches}
        # A batch's end is set once all its results are in: read with them, not later.
        ends = {h.id: h.end for h in batches}
        for held in batches:
            held.pending, held.slots, held.answered = [], [], []
        self._unflushed = 0
        # A batch's first progress is written before its first request goes out (_send_chunk).
        first_progress = any(h.started is not None and not h.started.done() for h in batches)
        loop = asyncio.get_running_loop()
        began = written = loop.time()
        now = self._clock()
        events: list[PushEventRow] = []
        dead_installations: list[int] = []
        rows: list[dict[str, Any]] = []
        freezes: list[dict[str, Any]] = []
        steps: list[
            tuple[_Held, bytearray, list[tuple[Recipient, DeliveryResult]], list[DeliveryBatch]]
        ] = []
        try:
            async with transaction(self._sessions) as session:
                if not first_progress and is_postgres(session):
                    await session.execute(_NO_DISK_WAIT)
                held_ids = set(
                    await session.scalars(
                        _HOLD,
                        {
                            "ids": [h.id for h in batches],
                            "owner": self.worker_id,
                            "lease": now + self._lease,
                        },
                    )
                )
                for held in batches:
                    if held.id not in held_ids:
                        self._lose(held, unrecorded=len(taken[held.id]))
                        continue
                    bits = bytearray(held.done)
                    deferred = list(held.deferred)
                    tally = self._outcomes(
                        held, taken[held.id], now, bits, deferred, events, dead_installations
                    )
                    retry_batches: list[DeliveryBatch] = []
                    ended = ends[held.id]
                    if ended is not None:
                        tally.recorded += len(deferred)
                        for recipient, _ in deferred:
                            _mark(bits, held.position(recipient))
                        retry_batches = self._retry_batches(held, deferred, now, tally, events)
                        deferred = []
                    rows.append(
                        {
                            "batch_id": held.id,
                            "owner": self.worker_id,
                            "to_status": (
                                BatchStatus.SENDING.value
                                if ended is None
                                else BatchStatus.DONE.value
                                if ended is _End.FINISH
                                else BatchStatus.PENDING.value
                            ),
                            "finished": now if ended is _End.FINISH else None,
                            "lease": now + self._lease if ended is None else None,
                            "to_owner": self.worker_id if ended is None else None,
                            "enqueued": now if ended is _End.HAND_BACK else None,
                            "bits": bytes(bits),
                            "add_targeted": tally.recorded if held.attempt == 0 else 0,
                            "add_sent": tally.sent,
                            "add_failed": tally.failed,
                            "add_deleted": tally.deleted,
                            "add_resent": tally.resent,
                        }
                    )
                    if held.frozen is not None:
                        freezes.append({"batch_id": held.id, "resolved": held.frozen})
                    steps.append((held, bits, deferred, retry_batches))
                    session.add_all(retry_batches)
                await record_push_events(session, events)
                if dead_installations:
                    await session.execute(
                        update(Installation)
                        .where(Installation.id.in_(dead_installations))
                        .values(push_token=None, webpush_p256dh=None, webpush_auth=None)
                    )
                if freezes:
                    await session.execute(_FREEZE, freezes)
                if rows:
                    await session.execute(_RECORD, rows)
                await session.flush()
                written = loop.time()
        except BaseException as exc:
            # Not recorded: the outcomes go back to their batches, for the next flush (or the
            # release of the batch); a batch waiting for its end learns why, unless the next
            # flush may well succeed (a deadlock, a lost connection: up to 5 in a row).
            self._retryable_failures = self._retryable_failures + 1 if is_retryable(exc) else 0
            retry_later = 0 < self._retryable_failures <= _RETRYABLE_FLUSHES
            for held in batches:
                if held.lost:
                    for wire, n in slots[held.id]:
                        wire.give(n)
                    continue
                held.pending[:0] = taken[held.id]
                held.slots[:0] = slots[held.id]
                held.answered[:0] = answered[held.id]
                self._unflushed += len(taken[held.id])
                if retry_later:
                    continue
                if isinstance(exc, Exception) and held.ended is not None and not held.ended.done():
                    held.ended.set_exception(exc)
                    held.end, held.ended = None, None
            raise
        committed = loop.time()
        self._retryable_failures = 0
        for wire, n in (item for held in batches for item in slots[held.id]):
            wire.give(n)  # recorded (or its batch lost): room for the next requests
        note_recording(
            ((committed - at, n) for held, *_ in steps for at, n in answered[held.id]),
            written - began,
            committed - written,
        )
        for held, bits, deferred, retry_batches in steps:
            held.done, held.deferred, held.frozen = bits, deferred, None
            if held.started is not None and not held.started.done():
                held.started.set_result(None)
            ended = ends[held.id]
            if ended is None:
                continue
            self._held.pop(held.id, None)
            self._leased.discard(held.id)
            self._journal.forget(held.journal_key)  # every answer is recorded
            # A campaign's retries stay in its lane (15 % of a campaign failing would otherwise
            # queue ahead of transactional sends).
            lane = Lane.BULK if held.send.kind == SendKind.CAMPAIGN else Lane.PROMPT
            jobs = [
                BatchJob(batch.id, delay=batch.not_before - now, recipients=None, lane=lane)
                for batch in retry_batches
            ]
            if ended is _End.HAND_BACK:
                # A job of its own, at once, for another worker (no dedupe key: the job
                # delivering it here is still running and holds the batch's).
                jobs.append(BatchJob(held.id, after=None))
            if held.ended is not None and not held.ended.done():
                held.ended.set_result(jobs)

    def _lose(self, held: _Held, *, unrecorded: int) -> None:
        """Another worker took this batch over (this one's lease expired: a stall longer than
        delivery_lease_seconds): nothing more is sent or recorded for it here."""
        log.warning(
            "batch %s is no longer held by worker %s (its lease expired and another worker took "
            "it over): %d outcomes not recorded here",
            held.id,
            self.worker_id,
            unrecorded,
            extra={"fields": {**_send_log_fields(held.send), "batch_id": held.id}},
        )
        held.lost = True
        held.pending, held.answered = [], []
        self._journal.let_go(held.journal_key)  # for the worker that took it over
        if held.started is not None and not held.started.done():
            held.started.set_result(None)  # its chunks see it lost
        for wire, n in held.slots:
            wire.give(n)
        held.slots = []
        self._held.pop(held.id, None)
        self._leased.discard(held.id)
        if held.ended is not None and not held.ended.done():
            held.ended.set_result([])

    def _outcomes(
        self,
        held: _Held,
        results: list[tuple[Recipient, DeliveryResult]],
        now: datetime,
        bits: bytearray,
        deferred: list[tuple[Recipient, DeliveryResult]],
        events: list[PushEventRow],
        dead_installations: list[int],
    ) -> _Tally:
        """Results of a held batch as events and dead installations (appended), bits set for
        those recorded, transient failures deferred to the batch's retry batch; the counters."""
        tally = _Tally()
        last_attempt = held.attempt + 1 >= self._settings.retry_max_attempts
        for recipient, result in results:
            outcome = result.outcome
            if outcome is Outcome.RETRY and not last_attempt:
                deferred.append((recipient, result))
                continue
            resent = False
            if outcome is Outcome.DELIVERED:
                kind, tally.sent = PushEventKind.SENT, tally.sent + 1
                resent = held.resent_if_accepted(recipient)
                tally.resent += resent
            elif outcome is Outcome.TOKEN_INVALID:
                kind, tally.deleted = PushEventKind.TOKEN_DELETED, tally.deleted + 1
                if recipient.installation_id is not None:
                    dead_installations.append(recipient.installation_id)
            else:  # FAILED, or RETRY with no attempt left
                kind, tally.failed = PushEventKind.ERROR, tally.failed + 1
            tally.recorded += 1
            _mark(bits, held.position(recipient))
            events.append(_event(held, recipient, kind, now, result.reason, resent))
        return tally

    def _retry_batches(
        self,
        held: _Held,
        to_retry: list[tuple[Recipient, DeliveryResult]],
        now: datetime,
        tally: _Tally,
        events: list[PushEventRow],
    ) -> list[DeliveryBatch]:
        """The batches retrying a batch's transient failures after a backoff (one for those
        that may have reached their device already, counted as re-sent when accepted; one for
        the others: a 429 or a 503 is no re-send), or their push_error if a retry would deliver
        after the send's time to live."""
        if not to_retry:
            return []
        batch, send = held, held.send
        delay = max(
            retry_delay(
                batch.attempt,
                r.retry_after,
                base=self._settings.retry_base_seconds,
                cap=self._settings.retry_max_seconds,
            )
            for _, r in to_retry
        )
        due = now + timedelta(seconds=delay)
        if send.expires_at is not None and due >= send.expires_at:
            # Retrying would deliver after the time to live: give up now, reason verbatim.
            for recipient, result in to_retry:
                tally.failed += 1
                events.append(
                    _event(held, recipient, PushEventKind.ERROR, now, result.reason, False)
                )
            return []
        retries: list[DeliveryBatch] = []
        for unknown in (False, True):
            some = [
                (r, result)
                for r, result in to_retry
                if (held.resent_if_accepted(r) or result.unknown_outcome) is unknown
            ]
            if not some:
                continue
            reason = some[0][1].reason
            retries.append(
                DeliveryBatch(
                    send_id=send.id,
                    attempt=batch.attempt + 1,
                    not_before=due,
                    last_enqueued_at=now,
                    recipients=_resolved_recipients(
                        (r for r, _ in some), events=held.trigger_events
                    ),
                    last_reason=reason[:1024] if reason else None,
                    outcome_unknown=unknown,
                )
            )
        return retries

    # Leases --------------------------------------------------------------------------------

    async def renew_leases(self) -> None:
        """One UPDATE extending the leases of every batch this worker holds (the runtime calls
        it every delivery_lease_renew_seconds); a batch no longer held is given up here."""
        ids = [i for i in self._leased if (h := self._held.get(i)) is None or h.end is None]
        if not ids:
            return
        await self._alive(check=True)
        now = self._clock()
        async with transaction(self._sessions) as session:
            kept = set(
                await session.scalars(
                    _HOLD, {"ids": ids, "owner": self.worker_id, "lease": now + self._lease}
                )
            )
        for batch_id in set(ids) - kept:
            held = self._held.get(batch_id)
            if held is None:
                self._leased.discard(batch_id)  # claimed, not yet sent: _hold will see it
            elif held.end is None and not held.lost:
                # (A batch that reached its end meanwhile is no longer held by anyone.)
                self._lose(held, unrecorded=len(held.pending))

    async def stop(self) -> None:
        """Stop delivering (SIGTERM, Ctrl-C, a deploy): claim nothing more, let the requests on
        the wire be answered (at most worker_stop_seconds), record them and hand the rest of each
        batch back: pending, lease cleared, progress kept, and a job enqueued at once so that
        another worker goes on with it. Nothing is sent twice."""
        self.stopping = True
        for wire in self._wires.values():
            wire.close()
        timeout = self._settings.worker_stop_seconds
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            log.warning("deliveries still running %s s after the stop: abandoned", timeout)
            await self.abort()
            return
        await self.abort()

    async def abort(self) -> None:
        """Stop at once, recording nothing more and handing nothing back: what a kill leaves
        (the leases expire and other workers take the batches over)."""
        self.stopping = True
        for wire in self._wires.values():
            wire.close()
        tasks = [*self._deliveries, *([self._flusher] if self._flusher else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._held.clear()
        self._leased.clear()
        self._journal.close()
        if self._liveness is not None:
            # As a dying process's socket closing would: other workers take over what this
            # one still held once its leases have been quiet for _quiet.
            await self._liveness.release()

    async def sweep_leases(self) -> int:
        """Enqueue the batches whose lease expired (a worker died holding them), each with a
        job of its own: taken over within delivery_lease_seconds + lease_sweep_seconds. On
        PostgreSQL the leases of a worker that is gone (its liveness lock is free) expire once
        they have been quiet for 1.5 renewals: taken over ~3-4 s after a kill."""
        now = self._clock()
        async with transaction(self._sessions) as session:
            if self._liveness is not None:
                await self._expire_gone(session, now)
            expired = (
                await session.execute(
                    select(DeliveryBatch.id, DeliveryBatch.lease_owner)
                    .where(
                        DeliveryBatch.status == BatchStatus.SENDING.value,
                        DeliveryBatch.lease_until < now,
                    )
                    .order_by(DeliveryBatch.id)
                    .limit(5000)
                )
            ).all()
        await self._queue.enqueue(
            [BatchJob(batch_id, after=owner or "expired") for batch_id, owner in expired]
        )
        if expired:
            log.info("%d batches of dead workers re-enqueued", len(expired))
        return len(expired)

    async def _expire_gone(self, session: AsyncSession, now: datetime) -> None:
        """Expires, in the caller's transaction, the quiet leases of workers that are gone."""
        quiet = now + self._lease - self._quiet  # renewed last before quiet - lease
        owners = list(
            await session.scalars(
                select(BATCHES.c.lease_owner)
                .distinct()
                .where(
                    BATCHES.c.status == BatchStatus.SENDING.value,
                    BATCHES.c.lease_until >= now,
                    BATCHES.c.lease_until < quiet,
                    BATCHES.c.lease_owner != self.worker_id,
                )
            )
        )
        dead = await gone(session, [owner for owner in owners if owner])
        if not dead:
            return
        expired = await session.execute(
            update(BATCHES)
            .where(
                BATCHES.c.status == BatchStatus.SENDING.value,
                BATCHES.c.lease_owner.in_(dead),
                BATCHES.c.lease_until < quiet,
            )
            .values(lease_until=now - self._lease)  # past for any worker's clock
        )
        log.warning(
            "delivery workers %s are gone (their PostgreSQL session ended): %d batches of theirs "
            "taken over",
            ", ".join(dead),
            rowcount(expired),
        )

    async def sweep_outbox(self, *, grace_seconds: float | None = None) -> int:
        """Re-enqueue pending batches whose job was lost (no queued or running job names them),
        and batches of dead workers; returns how many. Safe to run anywhere, any time: the
        per-batch dedupe key and the claim make extra enqueues harmless."""
        now = self._clock()
        grace = timedelta(
            seconds=self._settings.sweep_interval_seconds
            if grace_seconds is None
            else grace_seconds
        )
        async with transaction(self._sessions) as session:
            ids = list(
                await session.scalars(
                    select(DeliveryBatch.id)
                    .where(
                        DeliveryBatch.status == BatchStatus.PENDING.value,
                        DeliveryBatch.not_before <= now,
                        DeliveryBatch.last_enqueued_at <= now - grace,
                    )
                    .order_by(DeliveryBatch.id)
                    .limit(5000)
                )
            )
            if ids:
                # Also for those found waiting in the queue: the next sweep looks further on.
                await session.execute(
                    update(DeliveryBatch)
                    .where(DeliveryBatch.id.in_(ids))
                    .values(last_enqueued_at=now)
                )
        waiting = await self._queue.holding(ids)
        ids = [batch_id for batch_id in ids if batch_id not in waiting]
        await self._queue.enqueue([BatchJob(batch_id) for batch_id in ids])
        if ids:
            log.info("outbox sweep re-enqueued %d batches", len(ids))
        await asyncio.to_thread(self._journal.sweep, _JOURNAL_KEEP_SECONDS)
        return len(ids) + await self.sweep_leases()


def _event(
    held: _Held,
    recipient: Recipient,
    kind: PushEventKind,
    at: datetime,
    reason: str | None,
    resent: bool,
) -> PushEventRow:
    return held.events.row(
        kind,
        at,
        recipient.install_id,
        recipient.custom_id,
        recipient.advertising_id,
        recipient.token,
        None if kind is PushEventKind.SENT else reason,
        resent,
    )


def _resolved_recipients(
    recipients: Iterable[Recipient], *, events: dict[str, Any] | None
) -> dict[str, Any]:
    """A retry batch's recipients; with the trigger events of those it retries, if the batch
    had them (an automation's push renders `event.` again on the retry)."""
    installations: list[int] = []
    tokens: list[str] = []
    for recipient in recipients:
        if recipient.installation_id is not None:
            installations.append(recipient.installation_id)
        else:
            tokens.append(recipient.token)
    resolved: dict[str, Any] = {"installations": installations, "tokens": tokens}
    if events:
        kept = {str(pk): events[str(pk)] for pk in installations if str(pk) in events}
        if kept:
            resolved["events"] = kept
    return resolved


def _personalise(
    content: dict[str, Any],
    recipients: Sequence[Recipient],
    attributes: dict[str, dict[str, Any]],
    events: dict[str, dict[str, Any]],
) -> list[tuple[str | None, ...] | DeliveryResult | None]:
    """Each recipient's personalised texts, or the failure of a template that goes beyond a
    limit for this user's values: the same template fails the same way on a retry, so it is a
    push_error, not a retry."""
    renders: list[tuple[str | None, ...] | DeliveryResult | None] = []
    for recipient in recipients:
        try:
            renders.append(
                personalised_fields(
                    content,
                    recipient.language,
                    attributes.get(recipient.custom_id or "", {}),
                    events.get(str(recipient.installation_id)),
                )
            )
        except TemplateLimitError as exc:
            renders.append(DeliveryResult(Outcome.FAILED, reason=f"TemplateLimit: {exc.message}"))
    return renders
