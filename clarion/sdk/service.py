"""Installations as the SDK reports them, and the events the SDK sends."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps.service import AppAccess
from clarion.audiences.resolved import installations_changed
from clarion.batching import TurnBatcher
from clarion.custom_data.service import update_profiles
from clarion.db import insert_ignoring_conflicts, transaction, utcnow
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


@dataclass
class _PendingBatch:
    app_id: int
    install_id: str
    events: list[TrackedEventIn]
    received_at: datetime
    stored: bool = False


class EventIntake:
    """The SDK's event batches, stored by group: the calls that arrive in one turn of the event
    loop share one transaction (TurnBatcher), their installations read in one query per app
    and their last visits moved in one statement. A call returns once its group is committed:
    accepted means stored, as through the route. Measured with bench/sdk_events.py: a
    transaction per call (lookup, insert, last-visit write, commit) was ~0.6 ms of the 1.6 ms
    each call cost on SQLite."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, on_stored: OnStored | None = None
    ) -> None:
        self._sessions = sessions
        self._on_stored = on_stored
        self._batcher: TurnBatcher[_PendingBatch] = TurnBatcher(self._store_group)

    async def track(self, *, app_id: int, install_id: str, data: TrackedEventsIn) -> bool:
        """Stores the batch; False (nothing stored) when the app has no such installation."""
        pending = _PendingBatch(app_id, install_id, data.events, utcnow())
        await self._batcher.submit(pending)
        return pending.stored

    async def _store_group(self, group: list[_PendingBatch]) -> None:
        wanted: dict[int, set[str]] = {}
        for pending in group:
            wanted.setdefault(pending.app_id, set()).add(pending.install_id)
        async with transaction(self._sessions) as session:
            known: dict[tuple[int, str], str | None] = {}
            for app_id, install_ids in _chunks(wanted):
                found = await session.execute(
                    select(Installation.install_id, Installation.custom_id).where(
                        Installation.app_id == app_id, Installation.install_id.in_(install_ids)
                    )
                )
                known.update(((app_id, install_id), custom) for install_id, custom in found)
            rows: list[dict[str, Any]] = []
            for pending in group:
                key = (pending.app_id, pending.install_id)
                if key in known:
                    rows += _tracked_rows(*key, known[key], pending.events, pending.received_at)
                    pending.stored = True
            await record_tracked_events(session, rows)
            if self._on_stored is not None and rows:
                await self._on_stored(session, rows)
            now = utcnow()
            for app_id, install_ids in _chunks(wanted):
                await session.execute(
                    update(Installation)
                    .where(
                        Installation.app_id == app_id,
                        Installation.install_id.in_(install_ids),
                        Installation.last_seen_at <= now - LAST_SEEN_STEP,
                    )
                    .values(last_seen_at=now)
                    .execution_options(synchronize_session=False)
                )


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
    attribution: dict[str, str | None]
    if send is None:
        # Unknown send ids are still worth counting (a campaign of another system, say).
        attribution = {"send_token": data.send_id}
    elif send.campaign_token is not None:
        attribution = {
            "campaign_token": send.campaign_token,
            "send_token": send.token,
            "group_id": send.group_id,
        }
    else:
        attribution = {"send_token": send.token, "group_id": send.group_id}
    row = push_event_row(
        app_id=installation.app_id,
        kind=PushEventKind.OPENED,
        occurred_at=_past_or_now(data.occurred_at, now),
        platform=access.platform,
        install_id=installation.install_id,
        custom_id=installation.custom_id,
        advertising_id=installation.advertising_id,
        **attribution,
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
