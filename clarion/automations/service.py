"""Automations: events enter users, cancel events cancel their entries, a paused automation
stops its pending ones. No HTTP here. (The dispatcher that sends due entries: tasks.py.)

Entries are written in the transaction that stores their event (decision 0026): an event
accepted is an entry that exists, and a cancel event accepted is an entry cancelled."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import BigInteger, String, bindparam, column, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.automations.catalogue import (
    AutomationCatalogue,
    Entering,
    forget_everywhere,
    same_value,
)
from clarion.automations.models import ENTRIES, AutomationEntry, EntryState
from clarion.campaigns.models import Campaign, CampaignState
from clarion.db import (
    UtcDateTime,
    array_text,
    bulk_insert,
    bulk_times,
    is_postgres,
    json_text,
    rowcount,
)

log = logging.getLogger(__name__)

# Why a paused (or deleted) automation's pending entries were cancelled.
PAUSED = "paused"
# The states as stored (an enum member's .value costs a descriptor call: 100,000 a bench call).
_PENDING, _SENT, _CANCELLED = (
    EntryState.PENDING.value,
    EntryState.SENT.value,
    EntryState.CANCELLED.value,
)
# Values per IN list on SQLite (its bound parameters stop at 32,766); PostgreSQL binds one array.
_SQLITE_VALUES = 10_000


async def settle_entries(session: AsyncSession, campaign: Campaign, *, now: datetime) -> int:
    """After an automation was created, updated, paused or deleted: this process's catalogue
    forgets the app's automations (the next event reads them again), and unless the automation
    is still active, its pending entries are cancelled (a paused automation stops them; set
    live again, it enters users anew). Returns how many were cancelled; nothing for a campaign
    without a trigger."""
    if "trigger" not in campaign.body:
        return 0
    forget_everywhere(campaign.app_id)
    if campaign.state == CampaignState.ACTIVE.value and campaign.deleted_at is None:
        return 0
    result = await session.execute(
        update(ENTRIES)
        .where(ENTRIES.c.campaign_id == campaign.id, ENTRIES.c.state == _PENDING)
        .values(state=_CANCELLED, reason=PAUSED, finished_at=now)
    )
    return rowcount(result)


@dataclass(frozen=True, slots=True)
class Entered:
    """What a call's events did: entries written (those also cancelled by a later event of the
    same call included), and pending entries cancelled."""

    entered: int = 0
    cancelled: int = 0


@dataclass(slots=True)
class _Entry:
    """An entry this call may cancel or that blocks a new one: read, or written by this call
    (id None)."""

    id: int | None
    campaign_id: int
    custom_id: str | None
    install_id: str | None
    # What the entry keeps of its event, and its JSON text (an entry read has the text only).
    event: dict[str, Any] | None
    event_text: str
    entered_at: datetime
    state: str
    reason: str | None = None
    # Written by this call only (as bulk_insert takes it: text on PostgreSQL).
    due_at: Any = None
    timed: bool = True

    def attributes(self) -> dict[str, Any]:
        if self.event is None:
            self.event = orjson.loads(self.event_text)
        attributes: dict[str, Any] = self.event.get("attributes") or {}
        return attributes


_ENTRY_COLUMNS = (
    "app_id",
    "campaign_id",
    "custom_id",
    "install_id",
    "event",
    "entered_at",
    "due_at",
    "timed",
    "state",
    "reason",
    "finished_at",
)


async def enter_stored(
    session: AsyncSession,
    catalogue: AutomationCatalogue,
    rows: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
) -> Entered:
    """enter_events for rows of any apps (the SDK's event batches of one loop turn)."""
    by_app: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_app.setdefault(row["app_id"], []).append(row)
    entered = cancelled = 0
    # In ascending order: the users' locks of two transactions are then taken in one order.
    for app_id, events in sorted(by_app.items()):
        done = await enter_events(session, catalogue, app_id=app_id, events=events, now=now)
        entered += done.entered
        cancelled += done.cancelled
    return Entered(entered, cancelled)


async def enter_events(
    session: AsyncSession,
    catalogue: AutomationCatalogue,
    *,
    app_id: int,
    events: Sequence[Mapping[str, Any]],
    now: datetime,
) -> Entered:
    """Match events just stored (tracked_events rows: name as stored, label, attributes, tags,
    occurred_at, custom_id, install_id) with the app's live automations, in the session that
    stores them.

    Server events (`ue.`) enter their custom user id, SDK events their installation (with the
    custom id it carried). A cancel event cancels the pending entries of its installation or
    of its custom id, and with a `match_attribute` only those whose trigger event had the same
    value. The events of one call are taken in time order, each cancelling before it enters (an
    automation whose trigger is also its cancel event restarts its delay). Set-based, whatever
    the number of events: one read of the entries concerned per kind of id (once_per_days,
    cancels), one bulk insert, one update (on SQLite, one per cancel event name)."""
    live = await catalogue.live(session, app_id)
    relevant = [event for event in events if live.listens_to(event["name"])]
    if not relevant:
        return Entered()
    relevant.sort(key=lambda event: event["occurred_at"])  # stable: a call's order for ties
    postgres = is_postgres(session)

    # Which users' entries of which automations matter: those a cancel event may cancel, and
    # those an entry rule counts.
    by_custom_id: set[tuple[int, str]] = set()
    by_install_id: set[tuple[int, str]] = set()
    # The automations that an event of this call may cancel: only their new entries (and those
    # of once_per_days ones) are kept as _Entry, indexed by user, for the later events of the
    # call to see; the others go straight to a row (no object per entry: 2,470 a bench call).
    cancellable: set[int] = set()
    counted: set[str] = set()  # the users a once_per_days rule counts
    longest_rule = 0
    for event in relevant:
        for cancel in live.cancelling.get(event["name"], ()):
            cancellable.add(cancel.campaign_id)
            _add_user(event, cancel.campaign_id, by_custom_id, by_install_id, both=True)
        for rule in live.entering.get(event["name"], ()):
            if rule.once_per_days is not None and rule.matches(event["label"], event["attributes"]):
                _add_user(event, rule.campaign_id, by_custom_id, by_install_id, both=False)
                counted.add(event["install_id"] or event["custom_id"])
                longest_rule = max(longest_rule, rule.once_per_days)
    if counted and postgres:
        await _lock_users(session, app_id, counted)
    since = now - timedelta(days=longest_rule)
    known = await _entries_of(session, by_custom_id, by_install_id, since=since)
    by_custom: dict[tuple[int, str], list[_Entry]] = {}
    by_install: dict[tuple[int, str], list[_Entry]] = {}
    for entry in known:
        _index(entry, by_custom, by_install)

    stamp = bulk_times(session)  # each distinct timestamp formatted once (PostgreSQL)
    entered_at = stamp(now)
    written: list[_Entry | tuple[Any, ...]] = []
    cancelled: dict[str, list[int]] = {}  # reason -> ids of entries read
    cancelled_here = 0
    for event in relevant:
        attributes = event["attributes"] or {}
        for cancel in live.cancelling.get(event["name"], ()):
            for entry in _entries_of_user(event, cancel.campaign_id, by_custom, by_install):
                if entry.state != _PENDING:
                    continue
                if cancel.match_attribute is not None:
                    name = cancel.match_attribute
                    theirs = entry.attributes()
                    if not (
                        name in attributes
                        and name in theirs
                        and same_value(attributes[name], theirs[name])
                    ):
                        continue
                entry.state, entry.reason = _CANCELLED, cancel.event
                if entry.id is None:
                    cancelled_here += 1
                else:
                    cancelled.setdefault(cancel.event, []).append(entry.id)
        kept: tuple[dict[str, Any], str] | None = None
        for rule in live.entering.get(event["name"], ()):
            if not rule.matches(event["label"], attributes):
                continue
            if rule.once_per_days is not None and _entered_lately(
                event, rule, now, by_custom, by_install
            ):
                continue
            # The event as entries keep it, serialised once for all the automations it enters
            # (json.dumps per entry was a fifth of the bench's matching time).
            kept = kept or _kept(event)
            # An event reported late (an SDK's offline queue, a Trigger Events `time` up to
            # 24 h ago) is due now rather than in the past.
            due_at = stamp(max(event["occurred_at"] + rule.delay, now))
            if rule.once_per_days is None and rule.campaign_id not in cancellable:
                written.append(
                    (
                        app_id,
                        rule.campaign_id,
                        event["custom_id"],
                        event["install_id"],
                        kept[1],
                        entered_at,
                        due_at,
                        not rule.local_time,
                        _PENDING,
                        None,
                        None,
                    )
                )
                continue
            entry = _new_entry(event, kept, rule, now, due_at)
            written.append(entry)
            _index(entry, by_custom, by_install)

    finished_at = stamp(now)
    await bulk_insert(
        session,
        AutomationEntry.__tablename__,
        _ENTRY_COLUMNS,
        [
            row if isinstance(row, tuple) else _entry_row(app_id, row, entered_at, finished_at)
            for row in written
        ],
    )
    await _cancel(session, cancelled, now=now)
    return Entered(len(written), cancelled_here + sum(map(len, cancelled.values())))


# pg_advisory_xact_lock's first key for the users' stripes: "entr".
_LOCK_CLASS = 0x656E7472
# once_per_days reads a user's entries then writes one: two calls for the same user in two
# transactions would both read none and both enter (SQLite's one connection serialises them
# already). A call locks its users' stripes until it commits, at most this many per app: one
# lock per user was up to 1,000 per call, and PostgreSQL's lock table holds about
# max_locks_per_transaction (64) times max_connections in all; with 64, two bulk calls of an
# app entering the same once_per_days automations wait for each other (their entries' read,
# write and commit), single-user calls seldom (1 in 64).
_STRIPES = 64
_LOCK_STRIPES = """SELECT pg_advisory_xact_lock(:kind, stripe)
FROM unnest(CAST(:stripes AS INTEGER[])) AS stripe"""


async def _lock_users(session: AsyncSession, app_id: int, users: set[str]) -> None:
    """Wait for the other transactions entering these users, and hold them off until this one
    ends. One statement, the stripes in ascending order (unnest keeps the array's): two calls
    take their common stripes in the same order, so they wait rather than deadlock (apps are
    taken in ascending order too, by enter_stored)."""
    stripes = sorted(
        {(app_id * _STRIPES + zlib.crc32(user.encode()) % _STRIPES) % 2**31 for user in users}
    )
    await session.execute(text(_LOCK_STRIPES), {"kind": _LOCK_CLASS, "stripes": stripes})


def _add_user(
    event: Mapping[str, Any],
    campaign_id: int,
    by_custom_id: set[tuple[int, str]],
    by_install_id: set[tuple[int, str]],
    *,
    both: bool,
) -> None:
    """The ids under which the event's user has entries: an entry rule counts those of the
    trigger's own kind of id; a cancel event reaches both (its installation, its custom id)."""
    if event["install_id"] is not None:
        by_install_id.add((campaign_id, event["install_id"]))
        if not both:
            return
    if event["custom_id"] is not None:
        by_custom_id.add((campaign_id, event["custom_id"]))


# The (automation, user) pairs joined with the entries: an index probe per pair on
# ix_automation_entries_custom / _install. `campaign_id = ANY(..) AND custom_id = ANY(..)` was
# planned by PostgreSQL as a scan of every pending entry of those automations (16,000 rows read
# for 800 wanted after 20 bench calls, and growing), and SQLite scans the whole table for
# `(campaign_id, custom_id) IN (...)`.
_PAIRS_SQLITE = """SELECT e.id, e.campaign_id, e.custom_id, e.install_id, e.event, e.entered_at,
    e.state
FROM (SELECT column1 AS campaign_id, column2 AS user_id FROM (VALUES {values})) AS w
JOIN automation_entries e ON e.campaign_id = w.campaign_id AND e.{column} = w.user_id
WHERE e.state = :pending OR (e.state = :sent AND e.entered_at >= :since)"""
# PostgreSQL: two arrays (one statement text whatever the count), and a LATERAL subquery kept
# from being flattened (OFFSET 0): joined plainly, a table of 50,000 entries was hashed whole
# for 1,000 pairs (25-50 ms a call, against 1.4 ms for the 1,000 index probes).
_PAIRS_POSTGRES = """SELECT e.* FROM unnest(CAST(:campaigns AS BIGINT[]),
    CAST(:users AS VARCHAR[])) AS w (campaign_id, user_id)
CROSS JOIN LATERAL (
    SELECT e.id, e.campaign_id, e.custom_id, e.install_id, CAST(e.event AS TEXT) AS event,
        e.entered_at, e.state
    FROM automation_entries e
    WHERE e.campaign_id = w.campaign_id AND e.{column} = w.user_id
        AND (e.state = :pending OR (e.state = :sent AND e.entered_at >= :since))
    OFFSET 0
) AS e"""
# The event as its JSON text, decoded (orjson) only for the entries a match_attribute compares:
# decoding every row in the driver was half of a 1,000-cancel call's CPU (14 of 39 ms).
_COLUMNS = (
    column("id", BigInteger),
    column("campaign_id", BigInteger),
    column("custom_id", String),
    column("install_id", String),
    column("event", String),
    column("entered_at", UtcDateTime),
    column("state", String),
)


async def _entries_of(
    session: AsyncSession,
    by_custom_id: set[tuple[int, str]],
    by_install_id: set[tuple[int, str]],
    *,
    since: datetime,
) -> list[_Entry]:
    """The pending entries of these (automation, user) pairs, and those sent since `since`
    (the entry rules count them): one statement per kind of id (more on SQLite past
    _SQLITE_VALUES values)."""
    postgres = is_postgres(session)
    states = {"pending": _PENDING, "sent": _SENT, "since": since}
    found: dict[int, _Entry] = {}
    for user_column, pairs in (("custom_id", by_custom_id), ("install_id", by_install_id)):
        ordered = sorted(pairs)
        step = len(ordered) if postgres else _SQLITE_VALUES // 2
        for start in range(0, len(ordered), max(step, 1)):
            some = ordered[start : start + step]
            parameters: dict[str, Any] = dict(states)
            if postgres:
                sql = _PAIRS_POSTGRES.format(column=user_column)
                parameters["campaigns"] = array_text(campaign for campaign, _ in some)
                parameters["users"] = array_text(user for _, user in some)
            else:
                values = ", ".join(f"(:c{n}, :u{n})" for n in range(len(some)))
                sql = _PAIRS_SQLITE.format(values=values, column=user_column)
                for n, (campaign, user) in enumerate(some):
                    parameters[f"c{n}"], parameters[f"u{n}"] = campaign, user
            rows = await session.execute(text(sql).columns(*_COLUMNS), parameters)
            for row in rows:
                found[row.id] = _Entry(
                    id=row.id,
                    campaign_id=row.campaign_id,
                    custom_id=row.custom_id,
                    install_id=row.install_id,
                    event=None,
                    event_text=row.event,
                    entered_at=row.entered_at,
                    state=row.state,
                )
    return list(found.values())


def _index(
    entry: _Entry,
    by_custom: dict[tuple[int, str], list[_Entry]],
    by_install: dict[tuple[int, str], list[_Entry]],
) -> None:
    if entry.custom_id is not None:
        by_custom.setdefault((entry.campaign_id, entry.custom_id), []).append(entry)
    if entry.install_id is not None:
        by_install.setdefault((entry.campaign_id, entry.install_id), []).append(entry)


def _entries_of_user(
    event: Mapping[str, Any],
    campaign_id: int,
    by_custom: dict[tuple[int, str], list[_Entry]],
    by_install: dict[tuple[int, str], list[_Entry]],
) -> list[_Entry]:
    """The entries of the event's installation or of its custom id, each once."""
    found: dict[int, _Entry] = {}
    for index, value in ((by_install, event["install_id"]), (by_custom, event["custom_id"])):
        if value is not None:
            for entry in index.get((campaign_id, value), ()):
                found[id(entry)] = entry
    return list(found.values())


def _entered_lately(
    event: Mapping[str, Any],
    rule: Entering,
    now: datetime,
    by_custom: dict[tuple[int, str], list[_Entry]],
    by_install: dict[tuple[int, str], list[_Entry]],
) -> bool:
    """once_per_days: an entry of the same user (the trigger's kind of id) pending or sent,
    entered within the last N days. Cancelled and skipped ones sent nothing: they do not count."""
    if event["install_id"] is not None:
        entries = by_install.get((rule.campaign_id, event["install_id"]), [])
    else:
        entries = by_custom.get((rule.campaign_id, event["custom_id"]), [])
    since = now - timedelta(days=rule.once_per_days or 0)
    return any(entry.state in (_PENDING, _SENT) and entry.entered_at >= since for entry in entries)


def _kept(event: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """What an entry keeps of its event (the message's `event.` values), and its JSON text (the
    JSON column's value: bulk_insert goes to the driver)."""
    kept = {
        "name": event["name"],
        "label": event["label"],
        "attributes": event["attributes"],
        "tags": event["tags"],
    }
    return kept, json_text(kept) or "null"


def _new_entry(
    event: Mapping[str, Any],
    kept: tuple[dict[str, Any], str],
    rule: Entering,
    now: datetime,
    due_at: Any,
) -> _Entry:
    return _Entry(
        id=None,
        campaign_id=rule.campaign_id,
        custom_id=event["custom_id"],
        install_id=event["install_id"],
        event=kept[0],
        event_text=kept[1],
        entered_at=now,
        due_at=due_at,
        timed=not rule.local_time,
        state=_PENDING,
    )


def _entry_row(app_id: int, entry: _Entry, entered_at: Any, finished_at: Any) -> tuple[Any, ...]:
    """An entry written by this call as bulk_insert takes it (timestamps as the call formatted
    them); cancelled by a later event of the call, it is written finished."""
    finished = entry.state != _PENDING
    return (
        app_id,
        entry.campaign_id,
        entry.custom_id,
        entry.install_id,
        entry.event_text,
        entered_at,
        entry.due_at,
        entry.timed,
        entry.state,
        entry.reason,
        finished_at if finished else None,
    )


# PostgreSQL: every cancelled entry with its reason, one statement (one per cancel event name
# was 20 statements for a bench call's 20 names). Found by primary key: "still pending" is
# written as "none of the finished states" because `state = 'pending'` let the planner walk
# the partial index of every pending entry (ix_automation_entries_due: 47 ms at 100,000
# pending, against 3 ms for 1,400 ids by key) or hash the whole table.
_CANCEL_POSTGRES = """UPDATE automation_entries e
SET state = :cancelled, reason = w.reason, finished_at = :now
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:reasons AS VARCHAR[])) AS w (id, reason)
WHERE e.id = ANY(CAST(:ids AS BIGINT[])) AND e.id = w.id
    AND e.state NOT IN (:sent, :cancelled, :skipped)"""


async def _cancel(session: AsyncSession, cancelled: dict[str, list[int]], *, now: datetime) -> None:
    """Pending entries (read by this call) become cancelled with their reason. One still
    pending only: one sent meanwhile by a dispatcher is past cancelling."""
    if not cancelled:
        return
    if is_postgres(session):
        pairs = [(entry_id, reason) for reason, ids in cancelled.items() for entry_id in ids]
        await session.execute(
            text(_CANCEL_POSTGRES),
            {
                "ids": array_text(entry_id for entry_id, _ in pairs),
                "reasons": array_text(reason for _, reason in pairs),
                "cancelled": _CANCELLED,
                "sent": _SENT,
                "skipped": EntryState.SKIPPED.value,
                "now": now,
            },
        )
        return
    # SQLite: a statement per cancel event name (in-process, no round trip).
    statement = (
        update(ENTRIES)
        .where(ENTRIES.c.id.in_(bindparam("ids", expanding=True)), ENTRIES.c.state == _PENDING)
        .values(state=_CANCELLED, reason=bindparam("reason"), finished_at=now)
    )
    for reason, ids in cancelled.items():
        for start in range(0, len(ids), _SQLITE_VALUES):
            some = ids[start : start + _SQLITE_VALUES]
            await session.execute(statement, {"ids": some, "reason": reason})
