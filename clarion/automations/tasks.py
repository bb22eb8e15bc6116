"""Automations in the background: the dispatcher, which sends due entries. clarion.runtime runs
one in every process that runs workers (docs/campaigns.md, "How an entry is sent").

At most once per entry (docs/decisions/0029-automation-dispatch.md): a pass claims due pending
entries, oldest first (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so that any number of processes
share them; SQLite has one process), decides each one, and writes the pushes into the delivery
outbox with the entries' new states, in one transaction. A crash before its commit leaves the
entries pending and the outbox untouched; after it, the entries are sent and the outbox holds
their batches, whose jobs are enqueued after the commit (the outbox sweep enqueues those lost
between the two). The workers deliver them as any other batch.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import BigInteger, Row, String, bindparam, insert, select, update
from sqlalchemy.exc import CompileError, DataError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.models import App
from clarion.automations.models import ENTRIES, EntryState
from clarion.automations.service import PAUSED
from clarion.automations.timing import next_local_time, quiet_until
from clarion.campaigns.fanout import reason_of
from clarion.campaigns.models import Campaign, CampaignState
from clarion.campaigns.schemas import CampaignBody, Trigger
from clarion.campaigns.service import landing_themes, send_content
from clarion.capping.service import Cap, capped, caps_for, lock_caps, record_receipts
from clarion.config import Settings
from clarion.db import in_values, is_postgres, transaction, uses_arrays, utcnow
from clarion.delivery.models import BATCHES, SENDS, SendKind
from clarion.health import beat
from clarion.inapp.eligibility import version_for, zone_named
from clarion.metrics import count_sends
from clarion.queue import BatchJob, JobQueue
from clarion.sdk.models import Installation
from clarion.targeting import service as targeting

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Why a due entry was not sent (`reason`; "cap:<key>" names the cap reached).
UNREACHABLE = "unreachable"
AUDIENCE = "audience"

_UTC = ZoneInfo("UTC")
_INSERT_SENDS = insert(SENDS).returning(SENDS.c.id, sort_by_parameter_order=True)
_INSERT_BATCHES = insert(BATCHES).returning(BATCHES.c.id, sort_by_parameter_order=True)
# Entries that wait with a new due time (executemany: each its own).
_MOVE = (
    update(ENTRIES)
    .where(ENTRIES.c.id == bindparam("entry_id"))
    .values(due_at=bindparam("new_due_at"), timed=bindparam("new_timed"))
)
_CLAIMED = (
    ENTRIES.c.id,
    ENTRIES.c.app_id,
    ENTRIES.c.campaign_id,
    ENTRIES.c.custom_id,
    ENTRIES.c.install_id,
    ENTRIES.c.event,
    ENTRIES.c.due_at,
    ENTRIES.c.timed,
)
_USER_COLUMNS = (
    Installation.id,
    Installation.install_id,
    Installation.custom_id,
    Installation.timezone,
    Installation.last_seen_at,
    Installation.push_token,
    Installation.push_optin,
    Installation.is_dev,
)

# An app and a set of caps: the pushes whose receipts one `capped` read covers.
_CapGroup = tuple[int, tuple[Cap, ...]]
# An entry's new state, reason and send: one UPDATE for all the pass's entries that share it.
_Outcome = tuple[EntryState, str | None, int | None]


@dataclass(slots=True)
class _Automation:
    """One automation with entries in the pass, read once for all of them (plain values: the
    pass reads them for every entry)."""

    id: int
    token: str
    app_id: int
    dev_only: bool
    active: bool
    default_zone: ZoneInfo
    body: CampaignBody | None  # None: it cannot be sent (`failure` says why)
    failure: str | None = None
    caps: tuple[Cap, ...] = ()
    shares: list[tuple[str | None, int]] = field(default_factory=list)

    @property
    def cap_group(self) -> _CapGroup:
        """Automations of one app with the same caps share their receipts' reads."""
        return (self.app_id, self.caps)

    @property
    def trigger(self) -> Trigger:
        assert self.body is not None
        assert self.body.trigger is not None
        return self.body.trigger


@dataclass(slots=True)
class _Candidate:
    """A due entry still to be sent, with the installations it may reach."""

    entry: Row[Any]
    automation: _Automation
    user: str  # "custom:<id>" or "install:<id>"
    due_at: datetime
    timed: bool
    zone: ZoneInfo  # the user's (UTC when the trigger has no use for it)
    installations: list[int]


@dataclass(slots=True)
class _Pass:
    """What one pass decided: the entries' new states, and the pushes to write."""

    now: datetime
    again: bool = False  # entries left for the next pass, which may send them at once
    finished: dict[_Outcome, list[int]] = field(default_factory=lambda: defaultdict(list))
    moved: list[dict[str, Any]] = field(default_factory=list)
    # (automation id, version) -> entries sent and the installations each reaches
    pushes: dict[tuple[int, str | None], list[_Candidate]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def finish(self, entry: Row[Any], state: EntryState, reason: str | None = None) -> None:
        self.finished[(state, reason, None)].append(entry.id)

    def move(self, entry: Row[Any], due_at: datetime, timed: bool) -> None:
        self.moved.append({"entry_id": entry.id, "new_due_at": due_at, "new_timed": timed})

    def leave(self, candidate: _Candidate) -> None:
        """Left pending for the next pass, keeping what this one worked out of its time."""
        if candidate.timed != candidate.entry.timed:
            self.move(candidate.entry, candidate.due_at, candidate.timed)


class AutomationDispatcher:
    """Sends due automation entries: `tick` runs passes until the due backlog is gone."""

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
        self._page = settings.automation_pass_entries

    async def tick(self) -> int:
        """Passes until the backlog of due entries is gone (a pass found less than a page, and
        left none for the next); returns how many entries were claimed in all."""
        total = 0
        while True:
            beat()  # a backlog of full pages is progress (clarion.health)
            claimed, again = await self.dispatch()
            total += claimed
            if claimed < self._page and not again:
                return total

    async def dispatch(self) -> tuple[int, bool]:
        """One pass over at most a page of due entries: how many it claimed, and whether it
        left some for the next pass at once (a second push to one installation)."""
        now = self._clock()
        async with transaction(self._sessions) as session:
            entries = await self._claim(session, now)
            if not entries:
                return 0, False
            decided = _Pass(now)
            jobs = await self._dispatch(session, decided, entries)
        # After the commit: a job names only committed batches. A crash here leaves batches
        # with no job, which the outbox sweep enqueues (clarion.delivery.tasks).
        await self._queue.enqueue(jobs)
        return len(entries), decided.again

    async def _claim(self, session: AsyncSession, now: datetime) -> list[Row[Any]]:
        query = (
            select(*_CLAIMED)
            .where(ENTRIES.c.state == EntryState.PENDING.value, ENTRIES.c.due_at <= now)
            .order_by(ENTRIES.c.due_at)
            .limit(self._page)
        )
        if is_postgres(session):
            # Rows another dispatcher holds are skipped, not waited for: each takes its own.
            # One it has just sent no longer matches `pending` once its lock is released.
            query = query.with_for_update(skip_locked=True)
        return list(await session.execute(query))

    async def _dispatch(
        self, session: AsyncSession, decided: _Pass, entries: list[Row[Any]]
    ) -> list[BatchJob]:
        automations = await _automations(session, {entry.campaign_id for entry in entries})
        users = await _users(session, entries)
        candidates: list[_Candidate] = []
        for entry in entries:
            candidate = _timed(decided, entry, automations[entry.campaign_id], users)
            if candidate is not None:
                candidates.append(candidate)
        candidates = await _in_audience(session, decided, candidates)
        candidates = _outside_quiet_hours(decided, candidates)
        await _within_caps(session, decided, candidates)
        jobs = await self._write(session, decided)
        array = uses_arrays(session)
        for (state, reason, send_id), ids in decided.finished.items():
            await session.execute(
                update(ENTRIES)
                .where(in_values(ENTRIES.c.id, "ids", BigInteger(), array=array))
                .values(state=state.value, reason=reason, send_id=send_id, finished_at=decided.now),
                {"ids": ids},
            )
        if decided.moved:
            await session.execute(_MOVE, decided.moved)
        return jobs

    async def _write(self, session: AsyncSession, decided: _Pass) -> list[BatchJob]:
        """The pass's pushes into the outbox: one send per automation and version, batches of
        at most batch_size installations with each one's trigger event, the caps' receipts,
        and the entries sent. Returns the batches' jobs."""
        if not decided.pushes:
            return []
        now = decided.now
        sends: list[dict[str, Any]] = []
        for (_, version), sent in decided.pushes.items():
            automation = sent[0].automation
            body = automation.body
            assert body is not None
            themes = await landing_themes(session, app_id=automation.app_id, landing=body.landing)
            ttl = body.time_to_live
            sends.append(
                {
                    "token": str(uuid.uuid4()),
                    "app_id": automation.app_id,
                    "kind": SendKind.AUTOMATION.value,
                    "campaign_token": automation.token,
                    "version": version,
                    "dev_only": automation.dev_only,
                    "content": send_content(body, version, themes),
                    "created_at": now,
                    "expires_at": now + timedelta(seconds=ttl) if ttl else None,
                }
            )
        send_ids = list((await session.execute(_INSERT_SENDS, sends)).scalars())
        count_sends(session, SendKind.AUTOMATION.value, len(send_ids))
        size = self._settings.batch_size
        chunks: list[dict[str, Any]] = []
        receipts: dict[_CapGroup, list[int]] = defaultdict(list)
        for send_id, sent in zip(send_ids, decided.pushes.values(), strict=True):
            reached: list[int] = []
            events: dict[str, Any] = {}
            for candidate in sent:
                reached += candidate.installations
                if _event_shown(candidate):
                    for pk in candidate.installations:
                        events[str(pk)] = candidate.entry.event
                if candidate.automation.caps:
                    receipts[candidate.automation.cap_group] += candidate.installations
            decided.finished[(EntryState.SENT, None, send_id)] = [c.entry.id for c in sent]
            for start in range(0, len(reached), size):
                chunk = reached[start : start + size]
                recipients: dict[str, Any] = {"installations": chunk}
                shown = {key: events[key] for key in map(str, chunk) if key in events}
                if shown:
                    recipients["events"] = shown
                # Due at once: not_before and last_enqueued_at take their defaults (the
                # delivery clock, not the dispatcher's).
                chunks.append({"send_id": send_id, "recipients": recipients})
        batch_ids = list((await session.execute(_INSERT_BATCHES, chunks)).scalars())
        for (app_id, caps), ids in receipts.items():
            await record_receipts(session, app_id=app_id, caps=caps, installation_ids=ids, now=now)
        return [
            BatchJob(batch_id, recipients=len(chunk["recipients"]["installations"]))
            for batch_id, chunk in zip(batch_ids, chunks, strict=True)
        ]


def _timed(
    decided: _Pass,
    entry: Row[Any],
    automation: _Automation,
    users: dict[str, list[Any]],
) -> _Candidate | None:
    """The entry's fate before its audience: cancelled (automation stopped), skipped (its
    automation cannot be sent, or no installation to reach), moved to its local time, or a
    candidate with the installations it reaches."""
    if not automation.active:
        decided.finish(entry, EntryState.CANCELLED, PAUSED)
        return None
    if automation.failure is not None:
        decided.finish(entry, EntryState.SKIPPED, automation.failure)
        return None
    user = _user_of(entry)
    installs = users.get(user, ())
    trigger = automation.trigger
    zone = _UTC
    if trigger.at_local_time is not None or trigger.quiet_hours is not None:
        zone = _zone_of(installs, automation.default_zone)
    due_at, timed = entry.due_at, entry.timed
    if not timed and trigger.at_local_time is not None:
        due_at, timed = next_local_time(due_at, trigger.at_local_time, zone), True
        if due_at > decided.now:
            decided.move(entry, due_at, timed)
            return None
    dev_only = automation.dev_only
    reachable = [
        row.id
        for row in installs
        if row.push_token is not None and row.push_optin and row.is_dev == dev_only
    ]
    if not reachable:
        decided.finish(entry, EntryState.SKIPPED, UNREACHABLE)
        return None
    return _Candidate(entry, automation, user, due_at, timed, zone, reachable)


async def _in_audience(
    session: AsyncSession, decided: _Pass, candidates: list[_Candidate]
) -> list[_Candidate]:
    """The automation's targeting evaluated now, one query per automation over its
    candidates' installations: those that no longer match are dropped, and an entry with
    none left is skipped."""
    targeted: dict[int, set[int]] = defaultdict(set)
    automations: dict[int, _Automation] = {}
    for candidate in candidates:
        automation = candidate.automation
        assert automation.body is not None
        # A Dev-key automation is untargeted, as a Dev-key campaign is (campaigns.fanout).
        if automation.body.targeting is not None and not automation.dev_only:
            targeted[automation.id].update(candidate.installations)
            automations[automation.id] = automation
    if not targeted:
        return candidates
    matching = {
        automation_id: await _matching(session, automations[automation_id], ids, decided.now)
        for automation_id, ids in targeted.items()
    }
    kept: list[_Candidate] = []
    for candidate in candidates:
        found = matching.get(candidate.automation.id)
        if isinstance(found, str):  # the audience statement itself was refused
            decided.finish(candidate.entry, EntryState.SKIPPED, found)
            continue
        if found is not None:
            candidate.installations = [pk for pk in candidate.installations if pk in found]
            if not candidate.installations:
                decided.finish(candidate.entry, EntryState.SKIPPED, AUDIENCE)
                continue
        kept.append(candidate)
    return kept


def _outside_quiet_hours(decided: _Pass, candidates: list[_Candidate]) -> list[_Candidate]:
    """Entries due within their user's quiet hours wait for the window's end."""
    kept: list[_Candidate] = []
    for candidate in candidates:
        quiet = candidate.automation.trigger.quiet_hours
        until = None
        if quiet is not None:
            until = quiet_until(decided.now, quiet.start, quiet.end, candidate.zone)
        if until is not None:
            decided.move(candidate.entry, until, candidate.timed)
        else:
            kept.append(candidate)
    return kept


async def _within_caps(session: AsyncSession, decided: _Pass, candidates: list[_Candidate]) -> None:
    """Caps, A/B version, and the push each remaining entry makes (`decided.pushes`).

    Installations that reached a cap are dropped (an entry with none left is skipped,
    "cap:<key>"). A push counts against its caps once its receipt is committed: the caps are
    locked (capping.lock_caps, per app and key, as a campaign's fan-out page locks them)
    before their receipts are read, until the pass commits, so that no other dispatcher or
    fan-out spends the same last push meanwhile; and an installation gets at most one push
    per automation and per cap key in a pass (a second entry waits for the next pass)."""
    by_caps: dict[_CapGroup, set[int]] = defaultdict(set)
    for candidate in candidates:
        if candidate.automation.caps:
            by_caps[candidate.automation.cap_group].update(candidate.installations)
    by_app: dict[int, set[Cap]] = defaultdict(set)
    for app_id, caps in by_caps:
        by_app[app_id].update(caps)
    # Apps in one order in every process (lock_caps orders each app's keys): no deadlock.
    for app_id in sorted(by_app):
        await lock_caps(session, app_id=app_id, caps=list(by_app[app_id]))
    at_caps: dict[_CapGroup, dict[int, str]] = {}
    for (app_id, caps), ids in by_caps.items():
        at_caps[(app_id, caps)] = await capped(
            session, app_id=app_id, caps=caps, installation_ids=sorted(ids), now=decided.now
        )

    sent_by: set[tuple[int, int]] = set()  # (automation id, installation) in this pass
    counted: set[tuple[int, str]] = set()  # (installation, cap key) in this pass
    for candidate in candidates:
        automation = candidate.automation
        installations = candidate.installations
        keys = [cap.key for cap in automation.caps]
        if any((automation.id, pk) in sent_by for pk in installations) or any(
            (pk, key) in counted for pk in installations for key in keys
        ):
            decided.leave(candidate)  # a second push in this pass: the next one, at once
            decided.again = True
            continue
        if keys:
            at_cap = at_caps[automation.cap_group]
            room = [pk for pk in installations if pk not in at_cap]
            if not room:
                reason = f"cap:{at_cap[installations[0]]}"
                decided.finish(candidate.entry, EntryState.SKIPPED, reason)
                continue
            candidate.installations = installations = room
            counted.update((pk, key) for pk in room for key in keys)
        sent_by.update((automation.id, pk) for pk in installations)
        version = version_for(automation.token, candidate.user, automation.shares)
        decided.pushes[(automation.id, version)].append(candidate)


def _user_of(entry: Row[Any]) -> str:
    """How an entry names its user: an SDK event its installation, a server event its custom
    user id (every installation carrying it)."""
    if entry.install_id is not None:
        return f"install:{entry.install_id}"
    return f"custom:{entry.custom_id or ''}"


def _event_shown(candidate: _Candidate) -> bool:
    """Whether the push may render the trigger event. A Dev-key automation reaches debug
    installations, which claim any custom id they like: a server event (Live key, Trigger
    Events API) on that id would hand the app's data to whoever holds the Dev key, as the
    user's attributes would (clarion.delivery.tasks renders those as defaults). Its own SDK
    event is the installation's."""
    return not candidate.automation.dev_only or candidate.entry.install_id is not None


def _zone_of(installs: Sequence[Any], default: ZoneInfo) -> ZoneInfo:
    """The user's time zone: its most recently seen installation's that has one, else the
    app's default (as local-time campaigns use it)."""
    for row in sorted(installs, key=lambda row: row.last_seen_at, reverse=True):
        zone = zone_named(row.timezone)
        if zone is not None:
            return zone
    return default


async def _automations(session: AsyncSession, ids: Iterable[int]) -> dict[int, _Automation]:
    campaigns = list(await session.scalars(select(Campaign).where(Campaign.id.in_(list(ids)))))
    apps = {
        app.id: app
        for app in await session.scalars(
            select(App).where(App.id.in_({campaign.app_id for campaign in campaigns}))
        )
    }
    found: dict[int, _Automation] = {}
    for campaign in campaigns:
        app = apps[campaign.app_id]
        automation = _Automation(
            id=campaign.id,
            token=campaign.token,
            app_id=app.id,
            dev_only=campaign.dev_only,
            active=campaign.state == CampaignState.ACTIVE.value and campaign.deleted_at is None,
            default_zone=zone_named(app.default_timezone) or _UTC,
            body=None,
        )
        found[campaign.id] = automation
        try:
            body = CampaignBody.model_validate(campaign.body)
        except ValidationError as exc:
            automation.failure = _failure(reason_of(exc))
            continue
        if body.trigger is None:
            automation.failure = _failure("the campaign has no trigger")
            continue
        automation.body = body
        automation.caps = tuple(caps_for(app.push_caps or {}, automation=True, labels=body.labels))
        automation.shares = list(body.versions.items())
    return found


def _failure(reason: str) -> str:
    return f"failed: {reason}"[:160]


async def _users(session: AsyncSession, entries: Sequence[Row[Any]]) -> dict[str, list[Any]]:
    """Every installation of the pass's users, reachable or not (their zone is the user's),
    by user (_user_of): one query per app and kind of id."""
    by_install: dict[int, set[str]] = defaultdict(set)
    by_custom: dict[int, set[str]] = defaultdict(set)
    for entry in entries:
        if entry.install_id is not None:
            by_install[entry.app_id].add(entry.install_id)
        else:
            by_custom[entry.app_id].add(entry.custom_id or "")
    array = uses_arrays(session)
    users: dict[str, list[Any]] = defaultdict(list)
    for kind, column, wanted in (
        ("install", Installation.install_id, by_install),
        ("custom", Installation.custom_id, by_custom),
    ):
        for app_id, values in wanted.items():
            query = select(*_USER_COLUMNS).where(
                Installation.app_id == app_id, in_values(column, "values", String(), array=array)
            )
            for row in await session.execute(query, {"values": sorted(values)}):
                value = row.install_id if kind == "install" else row.custom_id
                users[f"{kind}:{value}"].append(row)
    return users


async def _matching(
    session: AsyncSession, automation: _Automation, installations: set[int], now: datetime
) -> set[int] | str:
    """Which of `installations` the automation's targeting matches now; or, when the database
    refuses the statement (it would refuse it again), the reason to skip its entries with.
    On PostgreSQL under a savepoint: the refusal must not abort the pass's transaction."""
    assert automation.body is not None
    assert automation.body.targeting is not None
    audience = targeting.installation_filter(
        automation.body.targeting, app_id=automation.app_id, now=now
    )
    query = select(Installation.id).where(
        in_values(Installation.id, "ids", BigInteger(), array=uses_arrays(session)), audience
    )
    params = {"ids": sorted(installations)}
    try:
        if is_postgres(session):
            async with session.begin_nested():
                return set(await session.scalars(query, params))
        return set(await session.scalars(query, params))
    except (CompileError, DataError, ProgrammingError) as exc:
        log.warning("automation %s: its audience cannot be evaluated: %s", automation.token, exc)
        return _failure(reason_of(exc))
