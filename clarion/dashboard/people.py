"""Looking a user up for support: installs, profile, custom audiences, recent events and pushes.

No HTTP here: each block is one query, bounded by an index and a LIMIT where one exists (see
each query's comment), and the result is plain data for the template. Nothing is changed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import Select, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from clarion.audiences.models import Audience, AudienceKind, AudienceMember
from clarion.custom_data.models import ProfileTag
from clarion.custom_data.service import attributes_of
from clarion.delivery.providers.webpush import endpoint_origin
from clarion.events.models import PushEvent, TrackedEvent
from clarion.sdk.models import Installation

# At most this many installations are listed for one custom user id (a shared id, such as a
# test account's, can be on thousands).
MAX_INSTALLS = 100
# The latest tracked events, and the latest push events, shown.
RECENT = 50


class LookupBy(StrEnum):
    CUSTOM_ID = "custom_id"
    INSTALL_ID = "install_id"


@dataclass(frozen=True, slots=True)
class InstallView:
    install_id: str
    custom_id: str | None
    is_dev: bool
    push_address: str | None  # the token shortened, or the Web Push endpoint's origin
    is_webpush: bool
    push_optin: bool
    language: str | None
    region: str | None
    timezone: str | None
    app_version: str | None
    os_version: str | None
    device_model: str | None
    created_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class AudienceView:
    name: str
    kind: str
    description: str | None
    matched: tuple[str, ...]  # the user's ids found among its current members


@dataclass(frozen=True, slots=True)
class EventView:
    occurred_at: datetime
    name: str
    label: str | None
    install_id: str | None
    custom_id: str | None
    details: str  # attributes and tags, as JSON text


@dataclass(frozen=True, slots=True)
class PushView:
    occurred_at: datetime
    kind: str
    install_id: str | None
    campaign_token: str | None
    group_id: str | None
    send_token: str | None
    reason: str | None


@dataclass(slots=True)
class UserProfile:
    query: str
    by: LookupBy
    custom_id: str | None = None  # whose attributes and tags are shown
    installs: list[InstallView] = field(default_factory=list)
    more_installs: bool = False  # more than MAX_INSTALLS carry the custom id
    attributes: list[tuple[str, Any]] = field(default_factory=list)
    tags: dict[str, list[str]] = field(default_factory=dict)
    audiences: list[AudienceView] = field(default_factory=list)
    events: list[EventView] = field(default_factory=list)
    pushes: list[PushView] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(
            self.installs
            or self.attributes
            or self.tags
            or self.audiences
            or self.events
            or self.pushes
        )


async def look_up(session: AsyncSession, *, app_id: int, query: str, by: LookupBy) -> UserProfile:
    """Everything known about the user `query` names (a custom user id or an install id)."""
    profile = UserProfile(query=query, by=by)
    installs: list[Installation] = []
    install_ids: list[str] = []
    if by is LookupBy.INSTALL_ID:
        install_ids.append(query)  # its events and audiences even if the install is gone
        # The unique (app_id, install_id) index.
        install = await session.scalar(
            select(Installation).where(
                Installation.app_id == app_id, Installation.install_id == query
            )
        )
        if install is not None:
            installs.append(install)
            profile.custom_id = install.custom_id
    else:
        profile.custom_id = query
    if profile.custom_id is not None:
        others, profile.more_installs = await _installs_of(
            session, app_id, profile.custom_id, skip=install_ids
        )
        installs += others
        install_ids += [install.install_id for install in others]
    profile.installs = [_install_view(install) for install in installs]
    advertising_ids = sorted({i.advertising_id for i in installs if i.advertising_id})

    if profile.custom_id is not None:
        typed = await attributes_of(session, app_id=app_id, custom_ids=[profile.custom_id])
        profile.attributes = sorted(typed.get(profile.custom_id, {}).items())
        profile.tags = await _tags_of(session, app_id, profile.custom_id)
    profile.audiences = await _audiences_of(
        session,
        app_id,
        {
            AudienceKind.CUSTOM_IDS: [profile.custom_id] if profile.custom_id else [],
            AudienceKind.INSTALL_IDS: install_ids,
            AudienceKind.ADVERTISING_IDS: advertising_ids,
        },
    )
    profile.events = await _tracked_events(session, app_id, install_ids, profile.custom_id)
    profile.pushes = await _push_events(session, app_id, install_ids)
    return profile


async def _installs_of(
    session: AsyncSession, app_id: int, custom_id: str, *, skip: Sequence[str]
) -> tuple[list[Installation], bool]:
    """The installs carrying the custom id, most recently seen first (ix_installations_app_
    custom_id), at most MAX_INSTALLS; and whether there are more."""
    query = select(Installation).where(
        Installation.app_id == app_id, Installation.custom_id == custom_id
    )
    if skip:
        query = query.where(Installation.install_id.not_in(skip))
    rows = list(
        await session.scalars(
            query.order_by(Installation.last_seen_at.desc(), Installation.id.desc()).limit(
                MAX_INSTALLS + 1
            )
        )
    )
    return rows[:MAX_INSTALLS], len(rows) > MAX_INSTALLS


async def _tags_of(session: AsyncSession, app_id: int, custom_id: str) -> dict[str, list[str]]:
    """The user's tag collections: the primary key (app_id, custom_id, collection, tag)."""
    rows = await session.execute(
        select(ProfileTag.collection, ProfileTag.tag)
        .where(ProfileTag.app_id == app_id, ProfileTag.custom_id == custom_id)
        .order_by(ProfileTag.collection, ProfileTag.tag)
    )
    tags: dict[str, list[str]] = defaultdict(list)
    for collection, tag in rows:
        tags[collection].append(tag)
    return dict(tags)


async def _audiences_of(
    session: AsyncSession, app_id: int, ids: dict[AudienceKind, list[str]]
) -> list[AudienceView]:
    """The audiences whose current generation holds one of the user's ids, each kind of audience
    by its own kind of id (as clarion.audiences.resolved resolves them for targeting).

    One branch per kind, so that every branch probes the members' primary key (audience_id,
    generation, member_id) with all three columns, once per audience of the app and id; an OR
    of the kinds would read whole audiences."""
    branches = [
        select(Audience.name, Audience.kind, Audience.description, AudienceMember.member_id)
        .join(
            AudienceMember,
            (AudienceMember.audience_id == Audience.id)
            & (AudienceMember.generation == Audience.generation),
        )
        .where(
            Audience.app_id == app_id,
            Audience.kind == kind.value,
            AudienceMember.member_id.in_(values),
        )
        for kind, values in ids.items()
        if values
    ]
    if not branches:
        return []
    matched: dict[str, tuple[str, str | None, list[str]]] = {}
    for name, kind, description, member_id in await session.execute(union_all(*branches)):
        matched.setdefault(name, (kind, description, []))[2].append(member_id)
    return [
        AudienceView(name, kind, description, tuple(sorted(members)))
        for name, (kind, description, members) in sorted(matched.items())
    ]


async def _tracked_events(
    session: AsyncSession, app_id: int, install_ids: list[str], custom_id: str | None
) -> list[EventView]:
    """The latest RECENT events tracked by these installs (SDK) or on the custom id (Trigger
    Events API, and SDK events of installs that carried it then), newest first: one query by
    installs, one by custom id, merged (the latest of both are among the latest of each)."""
    found: dict[int, TrackedEvent] = {}
    if install_ids:
        # ix_tracked_events_app_install: the installs' own events.
        by_install = select(TrackedEvent).where(
            TrackedEvent.app_id == app_id, TrackedEvent.install_id.in_(install_ids)
        )
        found.update((e.id, e) for e in await session.scalars(_latest_of(by_install)))
    if custom_id is not None:
        by_custom_id = _events_on_custom_id(app_id, custom_id)
        found.update((e.id, e) for e in await session.scalars(_latest_of(by_custom_id)))
    events = sorted(found.values(), key=lambda e: (e.occurred_at, e.id), reverse=True)[:RECENT]
    return [
        EventView(
            occurred_at=event.occurred_at,
            name=event.name,
            label=event.label,
            install_id=event.install_id,
            custom_id=event.custom_id,
            details=_details(event.attributes, event.tags),
        )
        for event in events
    ]


def _latest_of(query: Select[Any]) -> Select[Any]:
    """The RECENT latest events `query` finds. It is materialized (a CTE AS MATERIALIZED:
    PostgreSQL 12+, SQLite 3.35+) and then sorted: otherwise SQLite, without statistics (Clarion
    runs no ANALYZE), prefers walking ix_tracked_events_app_time, which gives the order for free,
    to the user's few rows, and reads the app's whole event log for a quiet user."""
    rows = query.cte("user_events").prefix_with("MATERIALIZED")
    event = aliased(TrackedEvent, rows)
    return select(event).order_by(event.occurred_at.desc(), event.id.desc()).limit(RECENT)


def _events_on_custom_id(app_id: int, custom_id: str) -> Select[Any]:
    """The custom id's events through ix_tracked_events_app_name_custom (app_id, name,
    custom_id, occurred_at), whose second column is the event's name: the app's event names are
    listed first by a recursive walk of that index (one probe per distinct name), then each
    name's range is probed for the custom id. Without the names, only the app's whole event log
    would do."""
    following = aliased(TrackedEvent)
    first = (
        select(TrackedEvent.name)
        .where(TrackedEvent.app_id == app_id)
        .order_by(TrackedEvent.name)
        .limit(1)
        .scalar_subquery()
    )
    names = select(first.label("name")).cte("event_names", recursive=True)
    step = (
        select(following.name)
        .where(following.app_id == app_id, following.name > names.c.name)
        .order_by(following.name)
        .limit(1)
        .scalar_subquery()
    )
    names = names.union_all(select(step.label("name")).where(names.c.name.is_not(None)))
    return select(TrackedEvent).where(
        TrackedEvent.app_id == app_id,
        TrackedEvent.name.in_(select(names.c.name)),
        TrackedEvent.custom_id == custom_id,
    )


async def _push_events(
    session: AsyncSession, app_id: int, install_ids: list[str]
) -> list[PushView]:
    """The latest RECENT push events (opt-ins, sends, opens, errors) of these installs, newest
    first. Every push event of a delivery names its install, so the user's installs find them
    all. Each install's latest are looked up by ix_push_events_install (a hash of install_id on
    PostgreSQL: an install has a few events a day), taken apart and then merged: one ORDER BY
    over all the installs let the databases walk the app's whole push log backwards for a user
    with no recent push."""
    if not install_ids:
        return []
    latest_of_each = [
        select(PushEvent.id)
        .where(PushEvent.app_id == app_id, PushEvent.install_id == install_id)
        .order_by(PushEvent.occurred_at.desc())
        .limit(RECENT)
        .subquery()
        for install_id in install_ids
    ]
    candidates = union_all(*(select(part.c.id) for part in latest_of_each))
    rows = await session.scalars(
        select(PushEvent)
        .where(PushEvent.id.in_(candidates))
        .order_by(PushEvent.occurred_at.desc(), PushEvent.id.desc())
        .limit(RECENT)
    )
    return [
        PushView(
            occurred_at=row.occurred_at,
            kind=row.kind,
            install_id=row.install_id,
            campaign_token=row.campaign_token,
            group_id=row.group_id,
            send_token=row.send_token,
            reason=row.reason,
        )
        for row in rows
    ]


def _install_view(install: Installation) -> InstallView:
    token = install.push_token
    is_webpush = bool(token and token.startswith(("https://", "http://")))
    # A Web Push endpoint shows which push service it is; a device token, its two ends.
    address = (endpoint_origin(token) or token) if token and is_webpush else _shortened(token)
    return InstallView(
        install_id=install.install_id,
        custom_id=install.custom_id,
        is_dev=install.is_dev,
        push_address=address,
        is_webpush=is_webpush,
        push_optin=install.push_optin,
        language=install.language,
        region=install.region,
        timezone=install.timezone,
        app_version=install.app_version,
        os_version=install.os_version,
        device_model=install.device_model,
        created_at=install.created_at,
        last_seen_at=install.last_seen_at,
    )


def _shortened(token: str | None) -> str | None:
    """A push token's ends, enough to tell tokens apart without printing a usable token."""
    if token is None or len(token) <= 16:
        return token
    return f"{token[:8]}…{token[-6:]}"


def _details(attributes: dict[str, Any] | None, tags: list[str] | None) -> str:
    shown: dict[str, Any] = {}
    if attributes:
        shown["attributes"] = attributes
    if tags:
        shown["tags"] = tags
    return orjson.dumps(shown).decode() if shown else ""
