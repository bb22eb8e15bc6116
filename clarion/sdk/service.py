"""Installations as the SDK reports them, and the events the SDK sends."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from clarion.apps.service import AppAccess
from clarion.audiences.resolved import installations_changed
from clarion.batching import TurnBatcher
from clarion.custom_data.service import update_profiles
from clarion.db import insert_ignoring_conflicts, sqlite_time, transaction, utcnow
from clarion.delivery.models import Send
from clarion.errors import ApiMisuseError, MalformedParameterError, NotFoundError
from clarion.events.models import APP_OPEN_EVENT, PushEventKind
from clarion.events.service import (
    PushEventRow,
    push_event_row,
    record_inapp_events,
    record_push_events,
    record_tracked_events,
)
from clarion.formats import IdType
from clarion.gdpr.service import blocked_identities
from clarion.outbound import OutboundPolicy
from clarion.sdk.models import Installation
from clarion.sdk.schemas import (
    AppOpenIn,
    InAppEventsIn,
    InstallationUpsert,
    ProfileEditsIn,
    PushOpenIn,
    SdkEvent,
    TrackedEventIn,
    TrackedEventsIn,
)

_INSTALL_ID = re.compile(r"^[A-Za-z0-9_\-.:]{1,128}$")
_PROFILE_FIELDS = (
    "custom_id",
    "advertising_id",
    "language",
    "region",
    "timezone",
    "app_version",
    "os_version",
    "device_model",
)


def check_install_id(install_id: str) -> str:
    if not _INSTALL_ID.fullmatch(install_id):
        raise MalformedParameterError(
            "install_id must be 1-128 characters of letters, digits, '_', '-', '.', ':'"
        )
    return install_id


_BLOCKABLE_FIELDS = {"custom_id": IdType.CUSTOM_ID, "advertising_id": IdType.ADVERTISING_ID}


async def upsert_installation(
    session: AsyncSession,
    *,
    access: AppAccess,
    install_id: str,
    data: InstallationUpsert,
    outbound: OutboundPolicy,
) -> Installation:
    """Create or update an installation; calling it twice with the same data changes nothing."""
    check_install_id(install_id)
    given = data.model_fields_set
    if data.webpush_subscription is not None:
        # Clarion will POST to the endpoint: what the URL alone tells is refused now, the
        # address a host name resolves to when delivering.
        refusal = outbound.url_refusal(data.webpush_subscription.endpoint, https_only=True)
        if refusal is not None:
            raise MalformedParameterError(f"webpush_subscription.endpoint: {refusal}")
    if "push_token" in given and "webpush_subscription" in given:
        raise MalformedParameterError("give push_token or webpush_subscription, not both")
    if "webpush_subscription" in given and access.platform != "web":
        raise MalformedParameterError("webpush_subscription is for web apps only")
    if "push_token" in given and access.platform == "web":
        raise MalformedParameterError("web apps register a webpush_subscription, not a push_token")

    now = utcnow()
    blocked = await blocked_identities(
        session,
        app_id=access.app_id,
        ids={
            IdType.INSTALL_ID: install_id,
            IdType.CUSTOM_ID: data.custom_id if "custom_id" in given else None,
            IdType.ADVERTISING_ID: data.advertising_id if "advertising_id" in given else None,
        },
        now=now,
    )
    if IdType.INSTALL_ID in blocked:
        raise ApiMisuseError("this installation was removed by a GDPR request; its data is ignored")
    # A user id or advertising id removed by a GDPR request is not attached again for a while.
    given = given - {field for field, kind in _BLOCKABLE_FIELDS.items() if kind in blocked}
    installation, created = await _get_or_create(
        session, app_id=access.app_id, install_id=install_id
    )
    identity = _identity(installation)
    installation.is_dev = access.is_dev
    installation.last_seen_at = now
    for name in _PROFILE_FIELDS:
        if name in given:
            setattr(installation, name, getattr(data, name))

    if "push_token" in given:
        await _assign_token(session, installation, data.push_token, None, None)
    if "webpush_subscription" in given:
        sub = data.webpush_subscription
        if sub is None:
            await _assign_token(session, installation, None, None, None)
        else:
            await _assign_token(session, installation, sub.endpoint, sub.keys.p256dh, sub.keys.auth)

    if data.push_optin is not None and (
        installation.optin_changed_at is None or data.push_optin != installation.push_optin
    ):
        installation.push_optin = data.push_optin
        installation.optin_changed_at = now
        kind = PushEventKind.OPTIN if data.push_optin else PushEventKind.OPTOUT
        await record_push_events(session, [_event_for(installation, access.platform, kind, now)])
    await session.flush()
    if created or _identity(installation) != identity:
        await installations_changed(
            session, app_id=access.app_id, installation_ids=[installation.id]
        )
    return installation


async def set_custom_id(
    session: AsyncSession, *, access: AppAccess, install_id: str, custom_id: str | None
) -> Installation:
    installation = await get_installation(session, access=access, install_id=install_id)
    now = utcnow()
    blocked = await blocked_identities(
        session, app_id=access.app_id, ids={IdType.CUSTOM_ID: custom_id}, now=now
    )
    # A user id removed by a GDPR request is not attached again for a while.
    changed = not blocked and installation.custom_id != custom_id
    if changed:
        installation.custom_id = custom_id
    installation.last_seen_at = now
    await session.flush()
    if changed:
        await installations_changed(
            session, app_id=access.app_id, installation_ids=[installation.id]
        )
    return installation


async def edit_profile(
    session: AsyncSession, *, access: AppAccess, install_id: str, data: ProfileEditsIn
) -> str | None:
    """Apply a profile().edit: attributes and tags to the profile of the installation's custom
    user id (decision 0024), language and region to the installation. All or nothing. Returns
    the custom id whose profile it edited; the profile itself is never answered: the SDK's key
    is public, and any page can attach any custom id."""
    installation = await get_installation(session, access=access, install_id=install_id)
    custom_id = installation.custom_id
    if data.operations:
        if custom_id is None:
            raise ApiMisuseError(
                "this installation has no custom user id: identify the user first "
                "(profile().identify({customId}) in the Web SDK, PUT …/custom_id in the SDK "
                "API): attributes and tags belong to the custom user id"
            )
        await update_profiles(
            session, app_id=access.app_id, updates=[(custom_id, False, data.operations)]
        )
    given = data.model_fields_set
    if "language" in given:
        installation.language = data.language
    if "region" in given:
        installation.region = data.region
    installation.last_seen_at = utcnow()
    return custom_id


def _identity(installation: Installation) -> tuple[str | None, str | None]:
    """The ids by which audiences can list an installation, besides its install id."""
    return installation.custom_id, installation.advertising_id


async def get_installation(
    session: AsyncSession, *, access: AppAccess, install_id: str
) -> Installation:
    installation = await session.scalar(
        select(Installation).where(
            Installation.app_id == access.app_id, Installation.install_id == install_id
        )
    )
    if installation is None:
        raise NotFoundError(f"no installation {install_id!r}")
    return installation


# An installation's last visit moves at most once a minute on event batches: an app sends
# several a minute while open, and each write of it cost a row update per call.
LAST_SEEN_STEP = timedelta(minutes=1)


async def track_events(
    session: AsyncSession, *, access: AppAccess, install_id: str, data: TrackedEventsIn
) -> list[dict[str, Any]]:
    """Stores the batch; returns the rows written (what automations match)."""
    installation = await get_installation(session, access=access, install_id=install_id)
    now = utcnow()
    rows = _tracked_rows(
        access.app_id, installation.install_id, installation.custom_id, data.events, now
    )
    await record_tracked_events(session, rows)
    if installation.last_seen_at <= now - LAST_SEEN_STEP:
        installation.last_seen_at = now
    return rows


def _tracked_rows(
    app_id: int,
    install_id: str,
    custom_id: str | None,
    events: list[TrackedEventIn],
    now: datetime,
) -> list[dict[str, Any]]:
    return [
        {
            "app_id": app_id,
            "occurred_at": _past_or_now(event.occurred_at, now),
            "install_id": install_id,
            "custom_id": custom_id,
            "name": event.name.lower(),
            "label": event.label,
            "attributes": event.attributes,
            "tags": event.tags,
        }
        for event in events
    ]


# Called in the transaction that stored a group's rows (clarion.runtime: automations enter
# them); the SDK knows nothing of what it does.
OnStored = Callable[[AsyncSession, list[dict[str, Any]]], Awaitable[object]]
# Whether something may want to be called for a stored event, by its app and stored name:
# False when surely not (then no transaction is opened for it), None when unknown.
Wanted = Callable[[int, str], bool | None]

# An event as stored: when (received, or earlier), name in lower case, label, attributes, tags.
_Resolved = tuple[datetime, str, str | None, dict[str, Any] | None, list[str] | None]


@dataclass(slots=True)
class _PendingBatch:
    app_id: int
    install_id: str
    events: list[_Resolved]
    received_at: datetime
    stored: bool = False


class EventIntake:
    """The SDK's event batches, stored by group: the calls that arrive in one turn of the event
    loop are stored together (TurnBatcher), and each returns once its group is committed:
    accepted means stored, as through the route. The installations are read and their last
    visits moved for the whole group, at most once a minute each (LAST_SEEN_STEP).

    Through the driver, without the ORM: on PostgreSQL the group is one statement
    (_STORE_POSTGRESQL), in autocommit (one round trip) unless `on_stored` is to be called in
    its transaction; on SQLite (on the loop, decision 0006) one transaction of a lookup, one
    executemany and, when a last visit is due, one update. Measured in-process, per call of 10
    events in groups of 20: the ORM's session, statements and COPY cost ~140 us of the API
    process's CPU (PostgreSQL) and ~200 us (SQLite); the statement ~25 us and the driver's
    calls ~100 us (decision 0023). `on_stored` gets the stored rows in their transaction,
    which is opened for it only when `wanted` does not rule out every event of the group."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        on_stored: OnStored | None = None,
        wanted: Wanted = lambda app_id, name: None,
    ) -> None:
        # The statement is atomic by itself: no BEGIN nor COMMIT round trip (a local flag).
        self._engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._sessions = sessions
        self._on_stored = on_stored
        self._wanted = wanted
        self._batcher: TurnBatcher[_PendingBatch] = TurnBatcher(self._store_group)

    async def track(self, *, app_id: int, install_id: str, events: list[SdkEvent]) -> bool:
        """Stores the batch; False (nothing stored) when the app has no such installation."""
        received = utcnow()
        resolved = [
            (_past_or_now(at, received), name.lower(), label, attributes, tags)
            for name, label, attributes, tags, at in events
        ]
        pending = _PendingBatch(app_id, install_id, resolved, received)
        await self._batcher.submit(pending)
        return pending.stored

    async def _store_group(self, group: list[_PendingBatch]) -> None:
        now = utcnow()
        if self._on_stored is None or not self._may_be_wanted(group):
            async with self._engine.connect() as connection:
                raw: Any = (await connection.get_raw_connection()).driver_connection
                known = await _store(raw, connection.dialect.name, group, now)
                if connection.dialect.name != "postgresql":
                    raw.commit()  # rolled back by the pool if it raised (reset on return)
        else:
            async with transaction(self._sessions) as session:
                connection = await session.connection()
                raw = (await connection.get_raw_connection()).driver_connection
                known = await _store(raw, connection.dialect.name, group, now)
                rows = [
                    {
                        "app_id": pending.app_id,
                        "occurred_at": at,
                        "install_id": pending.install_id,
                        "custom_id": known[pending.app_id, pending.install_id],
                        "name": name,
                        "label": label,
                        "attributes": attributes,
                        "tags": tags,
                    }
                    for pending in group
                    if (pending.app_id, pending.install_id) in known
                    for at, name, label, attributes, tags in pending.events
                ]
                if rows:
                    await self._on_stored(session, rows)
        for pending in group:
            pending.stored = (pending.app_id, pending.install_id) in known

    def _may_be_wanted(self, group: list[_PendingBatch]) -> bool:
        names = {(pending.app_id, event[1]) for pending in group for event in pending.events}
        return any(self._wanted(app_id, name) is not False for app_id, name in names)


async def _store(
    raw: Any, dialect: str, group: list[_PendingBatch], now: datetime
) -> dict[tuple[int, str], str | None]:
    """Stores the group's batches of known installations; their custom ids by (app, id)."""
    assert raw is not None
    if dialect == "postgresql":
        return await _store_postgresql(raw, group, now)
    return _store_sqlite(raw, group, now)


# The group as one JSON parameter: calls (app, install id, position) and their events, each
# stored with its installation's custom id, in the order received. Installations are found
# through their unique index (app_id, install_id), and a last visit moved when more than a
# minute old, skipping a row another transaction holds (it is moving it already): no lock
# waits, so no deadlock between API processes. PostgreSQL parses the JSON in C; the same rows
# sent as arrays took ~5x the CPU in psycopg, and COPY a round trip per step (BEGIN, lookup,
# COPY, its end, COMMIT) at ~0.1 ms of CPU each.
_STORE_POSTGRESQL = """
WITH calls AS (
  SELECT c.a AS app_id, c.i AS install_id, c.n, c.e
  FROM json_to_recordset($1::json) AS c(a bigint, i text, n int, e json)
), known AS (
  SELECT i.id, i.app_id, i.install_id, i.custom_id, i.last_seen_at FROM installations AS i
  WHERE i.app_id = ANY(ARRAY(SELECT DISTINCT app_id FROM calls))
    AND i.install_id = ANY(ARRAY(SELECT DISTINCT install_id FROM calls))
    AND (i.app_id, i.install_id) IN (SELECT app_id, install_id FROM calls)
), added AS (
  INSERT INTO tracked_events (app_id, occurred_at, install_id, custom_id, name, label,
                              attributes, tags)
  SELECT calls.app_id, e.t, calls.install_id, known.custom_id, e.n, e.l,
         CASE json_typeof(e.a) WHEN 'object' THEN e.a END,
         CASE json_typeof(e.g) WHEN 'array' THEN e.g END
  FROM calls JOIN known USING (app_id, install_id)
    CROSS JOIN LATERAL ROWS FROM (
      json_to_recordset(calls.e) AS (t timestamptz, n text, l text, a json, g json)
    ) WITH ORDINALITY AS e(t, n, l, a, g, m)
  ORDER BY calls.n, e.m
), seen AS (
  UPDATE installations SET last_seen_at = $2
  WHERE id IN (
    SELECT id FROM installations
    WHERE id IN (SELECT id FROM known WHERE last_seen_at <= $3)
    FOR UPDATE SKIP LOCKED
  )
)
SELECT app_id, install_id, custom_id FROM known
"""


async def _store_postgresql(
    raw: Any, group: list[_PendingBatch], now: datetime
) -> dict[tuple[int, str], str | None]:
    calls = orjson.dumps(
        [
            {
                "a": pending.app_id,
                "i": pending.install_id,
                "n": position,
                "e": [
                    {"t": at, "n": name, "l": label, "a": attributes, "g": tags}
                    for at, name, label, attributes, tags in pending.events
                ],
            }
            for position, pending in enumerate(group)
        ]
    )
    async with psycopg.AsyncRawCursor(raw) as cursor:
        await cursor.execute(_STORE_POSTGRESQL, (calls.decode(), now, now - LAST_SEEN_STEP))
        return {
            (app_id, install_id): custom for app_id, install_id, custom in await cursor.fetchall()
        }


def _store_sqlite(
    raw: Any, group: list[_PendingBatch], now: datetime
) -> dict[tuple[int, str], str | None]:
    """On the loop, without an await: nothing else runs on the connection meanwhile."""
    wanted: dict[int, set[str]] = {}
    for pending in group:
        wanted.setdefault(pending.app_id, set()).add(pending.install_id)
    custom_ids: dict[tuple[int, str], str | None] = {}
    due: dict[int, list[str]] = {}
    last_due = sqlite_time(now - LAST_SEEN_STEP)
    for app_id, install_ids in _chunks(wanted):
        marks = ", ".join("?" * len(install_ids))
        found = raw.execute(
            "SELECT install_id, custom_id, last_seen_at <= ? FROM installations"
            f" WHERE app_id = ? AND install_id IN ({marks})",
            (last_due, app_id, *install_ids),
        )
        for install_id, custom_id, seen_long_ago in found:
            custom_ids[app_id, install_id] = custom_id
            if seen_long_ago:
                due.setdefault(app_id, []).append(install_id)
    rows = []
    for pending in group:
        key = (pending.app_id, pending.install_id)
        if key in custom_ids:
            custom_id = custom_ids[key]
            # Formatted once for the events that carry no date of their own (~1 us each).
            received = sqlite_time(pending.received_at)
            rows += [
                (
                    pending.app_id,
                    received if at is pending.received_at else sqlite_time(at),
                    pending.install_id,
                    custom_id,
                    name,
                    label,
                    None if attributes is None else orjson.dumps(attributes).decode(),
                    None if tags is None else orjson.dumps(tags).decode(),
                )
                for at, name, label, attributes, tags in pending.events
            ]
    raw.executemany(
        "INSERT INTO tracked_events (app_id, occurred_at, install_id, custom_id, name, label,"
        " attributes, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    for app_id, install_ids in _chunks({app_id: set(ids) for app_id, ids in due.items()}):
        marks = ", ".join("?" * len(install_ids))
        raw.execute(
            "UPDATE installations SET last_seen_at = ?"
            f" WHERE app_id = ? AND install_id IN ({marks})",
            (sqlite_time(now), app_id, *install_ids),
        )
    return custom_ids


# Install ids per statement: a group has one per call of a loop turn, which under load can pass
# SQLite's 32,766 bound parameters.
_IDS_PER_STATEMENT = 500


def _chunks(wanted: dict[int, set[str]]) -> list[tuple[int, list[str]]]:
    chunks = []
    for app_id, install_ids in wanted.items():
        ids = sorted(install_ids)
        chunks += [
            (app_id, ids[start : start + _IDS_PER_STATEMENT])
            for start in range(0, len(ids), _IDS_PER_STATEMENT)
        ]
    return chunks


async def record_app_open(
    session: AsyncSession, *, access: AppAccess, install_id: str, data: AppOpenIn
) -> None:
    """The app was opened: its last visit, and an `_open` event (influenced opens)."""
    installation = await get_installation(session, access=access, install_id=install_id)
    now = utcnow()
    row = {
        "app_id": access.app_id,
        "occurred_at": _past_or_now(data.occurred_at, now),
        "install_id": installation.install_id,
        "custom_id": installation.custom_id,
        "name": APP_OPEN_EVENT,
        "label": None,
        "attributes": None,
        "tags": None,
    }
    await record_tracked_events(session, [row])
    installation.last_seen_at = now


async def record_push_open(
    session: AsyncSession, *, access: AppAccess, install_id: str, data: PushOpenIn
) -> None:
    """A notification was opened: attributed to its send through `com.batch.i`."""
    installation = await get_installation(session, access=access, install_id=install_id)
    send = await session.scalar(
        select(Send).where(Send.token == data.send_id, Send.app_id == access.app_id)
    )
    now = utcnow()
    # Unknown send ids are still worth counting (a campaign of another system, say).
    send_token = data.send_id if send is None else send.token
    group_id = None if send is None else send.group_id
    campaign_token = None if send is None else send.campaign_token
    row = push_event_row(
        app_id=installation.app_id,
        kind=PushEventKind.OPENED,
        occurred_at=_past_or_now(data.occurred_at, now),
        platform=access.platform,
        install_id=installation.install_id,
        custom_id=installation.custom_id,
        advertising_id=installation.advertising_id,
        send_token=send_token,
        group_id=group_id,
        campaign_token=campaign_token,
    )
    await record_push_events(session, [row])
    installation.last_seen_at = now


async def record_inapp(
    session: AsyncSession, *, access: AppAccess, install_id: str, data: InAppEventsIn
) -> int:
    installation = await get_installation(session, access=access, install_id=install_id)
    now = utcnow()
    rows = [
        {
            "app_id": access.app_id,
            "kind": event.kind.value,
            "occurred_at": _past_or_now(event.occurred_at, now),
            "platform": access.platform,
            "install_id": installation.install_id,
            "custom_id": installation.custom_id,
            "advertising_id": installation.advertising_id,
            "campaign_id": event.campaign_id,
            "cta_position": event.cta_position,
            "cta_label": event.cta_label,
            "version": event.version or "",
        }
        for event in data.events
    ]
    await record_inapp_events(session, rows)
    return len(rows)


async def _get_or_create(
    session: AsyncSession, *, app_id: int, install_id: str
) -> tuple[Installation, bool]:
    """The installation, and whether this call created it."""
    # ON CONFLICT DO NOTHING makes two racing first registrations safe without a savepoint
    # (pysqlite's legacy transaction mode would commit at the outermost RELEASE SAVEPOINT).
    query = select(Installation).where(
        Installation.app_id == app_id, Installation.install_id == install_id
    )
    installation = await session.scalar(query)
    if installation is not None:
        return installation, False
    now = utcnow()
    inserted = await session.scalar(
        insert_ignoring_conflicts(session, Installation, index=["app_id", "install_id"])
        .values(
            app_id=app_id,
            install_id=install_id,
            is_dev=False,
            push_optin=False,
            created_at=now,
            last_seen_at=now,
        )
        .returning(Installation.id)
    )
    installation = await session.scalar(query)
    assert installation is not None
    return installation, inserted is not None


async def _assign_token(
    session: AsyncSession,
    installation: Installation,
    token: str | None,
    p256dh: str | None,
    auth: str | None,
) -> None:
    if token is not None and token != installation.push_token:
        # The token moved (app reinstalled, backup restored): detach it from its old owner.
        await session.execute(
            update(Installation)
            .where(
                Installation.app_id == installation.app_id,
                Installation.push_token == token,
                Installation.id != installation.id,
            )
            .values(push_token=None, webpush_p256dh=None, webpush_auth=None)
        )
    installation.push_token = token
    installation.webpush_p256dh = p256dh
    installation.webpush_auth = auth


def _event_for(
    installation: Installation, platform: str, kind: PushEventKind, at: datetime
) -> PushEventRow:
    return push_event_row(
        app_id=installation.app_id,
        kind=kind,
        occurred_at=at,
        platform=platform,
        install_id=installation.install_id,
        custom_id=installation.custom_id,
        advertising_id=installation.advertising_id,
    )


def _past_or_now(at: datetime | None, now: datetime) -> datetime:
    # Device clocks drift; a timestamp from the future is taken as "now". Naive means UTC.
    if at is None:
        return now
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return min(at, now)
