"""Custom audiences: replace, update, read, list, delete, and membership for targeting.

Writes of the API (at most 10,000 ids a call) are applied within the call: the indexing token
they answer with is APPLIED at once, and REPLACED once a later replace supersedes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.audiences.models import (
    AUDIENCE_MEMBERS,
    Audience,
    AudienceIndexing,
    AudienceKind,
    AudienceMember,
    IndexingState,
)
from clarion.audiences.schemas import AudienceRead
from clarion.db import insert_ignoring_conflicts, upsert_insert
from clarion.devices.models import Installation
from clarion.errors import MalformedParameterError, NotFoundError
from clarion.formats import wire_date

# One member: its id, and (API 1.1) its attributes and tags.
Member = tuple[str, dict[str, Any] | None, list[str] | None]
# One change of an update: "add" or "remove", then the member.
Change = tuple[str, str, dict[str, Any] | None, list[str] | None]

_CHUNK = 5_000  # ids per IN (...) list, well under SQLite's bound-parameter limit


async def replace_audience(
    session: AsyncSession,
    *,
    app_id: int,
    name: str,
    kind: AudienceKind,
    description: str | None,
    members: Sequence[Member],
    now: datetime,
) -> str:
    """Create the audience, or replace all its members, atomically; returns the token."""
    await session.execute(
        insert_ignoring_conflicts(session, Audience, index=["app_id", "name"]).values(
            app_id=app_id, name=name, kind=kind.value, generation=-1, created_at=now
        )
    )
    audience = await _find(session, app_id, name, for_update=True)
    generation = audience.generation + 1
    unique = {member_id: (attributes, tags) for member_id, attributes, tags in members}
    if unique:
        await session.execute(
            AUDIENCE_MEMBERS.insert(),
            [
                {
                    "audience_id": audience.id,
                    "generation": generation,
                    "member_id": member_id,
                    "attributes": attributes,
                    "tags": tags,
                }
                for member_id, (attributes, tags) in unique.items()
            ],
        )
    await session.execute(
        delete(AudienceMember).where(
            AudienceMember.audience_id == audience.id, AudienceMember.generation < generation
        )
    )
    audience.generation = generation
    audience.kind = kind.value
    if description is not None:
        audience.description = description
    audience.nb_ids = len(unique)
    audience.updated_at = now
    return _indexing(session, audience, now)


async def update_audience(
    session: AsyncSession,
    *,
    app_id: int,
    name: str,
    kind: AudienceKind,
    changes: Sequence[Change],
    now: datetime,
) -> str:
    """Add and remove members of an existing audience (the last change of an id wins)."""
    audience = await _find(session, app_id, name, for_update=True)
    if audience.kind != kind.value:
        raise MalformedParameterError(f"audience {name!r} holds {audience.kind}, not {kind.value}")
    final = {
        member_id: (action, attributes, tags) for action, member_id, attributes, tags in changes
    }
    added = [
        {
            "audience_id": audience.id,
            "generation": audience.generation,
            "member_id": member_id,
            "attributes": attributes,
            "tags": tags,
        }
        for member_id, (action, attributes, tags) in final.items()
        if action == "add"
    ]
    removed = [member_id for member_id, (action, _, _) in final.items() if action == "remove"]
    if added:
        insert = upsert_insert(session, AUDIENCE_MEMBERS)
        await session.execute(
            insert.on_conflict_do_update(
                index_elements=["audience_id", "generation", "member_id"],
                set_={"attributes": insert.excluded.attributes, "tags": insert.excluded.tags},
            ),
            added,
        )
    for start in range(0, len(removed), _CHUNK):
        await session.execute(
            delete(AudienceMember).where(
                AudienceMember.audience_id == audience.id,
                AudienceMember.generation == audience.generation,
                AudienceMember.member_id.in_(removed[start : start + _CHUNK]),
            )
        )
    audience.nb_ids = (
        await session.scalar(
            select(func.count())
            .select_from(AudienceMember)
            .where(
                AudienceMember.audience_id == audience.id,
                AudienceMember.generation == audience.generation,
            )
        )
        or 0
    )
    audience.updated_at = now
    return _indexing(session, audience, now)


async def describe_audience(
    session: AsyncSession, *, app_id: int, name: str, indexing_token: str | None
) -> AudienceRead:
    audience = await _find(session, app_id, name)
    read = _read(audience)
    if indexing_token is not None:
        indexing = await session.get(AudienceIndexing, indexing_token)
        if indexing is None or indexing.audience_id != audience.id:
            raise NotFoundError(f"no indexing token {indexing_token!r} for audience {name!r}")
        replaced = indexing.generation < audience.generation
        read.indexing_state = (IndexingState.REPLACED if replaced else IndexingState.APPLIED).value
    return read


async def list_audiences(
    session: AsyncSession, *, app_id: int, offset: int, limit: int
) -> list[AudienceRead]:
    """Newest first (spec §8)."""
    audiences = await session.scalars(
        select(Audience)
        .where(Audience.app_id == app_id)
        .order_by(Audience.created_at.desc(), Audience.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [_read(audience) for audience in audiences]


async def delete_audience(session: AsyncSession, *, app_id: int, name: str) -> None:
    audience = await _find(session, app_id, name, for_update=True)
    await session.execute(delete(AudienceMember).where(AudienceMember.audience_id == audience.id))
    await session.execute(
        delete(AudienceIndexing).where(AudienceIndexing.audience_id == audience.id)
    )
    await session.delete(audience)


async def missing_audiences(session: AsyncSession, *, app_id: int, names: list[str]) -> list[str]:
    """The names among `names` that are not audiences of the app, in their order."""
    found = set(
        await session.scalars(
            select(Audience.name).where(Audience.app_id == app_id, Audience.name.in_(names))
        )
    )
    return [name for name in names if name not in found]


async def kinds_of(session: AsyncSession, *, app_id: int, names: list[str]) -> set[AudienceKind]:
    """The id kinds these audiences hold (for member_of_any)."""
    found = await session.scalars(
        select(Audience.kind).where(Audience.app_id == app_id, Audience.name.in_(names)).distinct()
    )
    return {AudienceKind(kind) for kind in found}


def member_of_any(
    *, app_id: int, names: list[str], kinds: Collection[AudienceKind] = tuple(AudienceKind)
) -> ColumnElement[bool]:
    """True for installations in at least one of these audiences (their current members): by
    custom user id, advertising id or install id, as each audience holds.

    `kinds`: the kinds these audiences hold (kinds_of), when known. With one kind the clause is
    a single EXISTS, which PostgreSQL runs as a semi-join over the members; an OR of three is
    evaluated row by row (measured: 8.5 times the cost of the same query without the audience,
    on a 1M-member audience)."""

    def member_by(kind: AudienceKind, identifier: Any) -> ColumnElement[bool]:
        return (
            select(AudienceMember.member_id)
            .join(
                Audience,
                (Audience.id == AudienceMember.audience_id)
                & (Audience.generation == AudienceMember.generation),
            )
            .where(
                Audience.app_id == app_id,
                Audience.name.in_(names),
                Audience.kind == kind.value,
                AudienceMember.member_id == identifier,
            )
            .correlate(Installation)
            .exists()
        )

    identifier = {
        AudienceKind.CUSTOM_IDS: Installation.custom_id,
        AudienceKind.ADVERTISING_IDS: Installation.advertising_id,
        AudienceKind.INSTALL_IDS: Installation.install_id,
    }
    return or_(false(), *(member_by(kind, identifier[kind]) for kind in sorted(kinds)))


def _indexing(session: AsyncSession, audience: Audience, now: datetime) -> str:
    token = str(uuid.uuid4())
    session.add(
        AudienceIndexing(
            token=token, audience_id=audience.id, generation=audience.generation, created_at=now
        )
    )
    return token


def _read(audience: Audience) -> AudienceRead:
    return AudienceRead(
        name=audience.name,
        type=audience.kind,
        description=audience.description,
        nb_ids=audience.nb_ids,
        created=wire_date(audience.created_at),
        updated=wire_date(audience.updated_at),
    )


async def _find(
    session: AsyncSession, app_id: int, name: str, *, for_update: bool = False
) -> Audience:
    query = select(Audience).where(Audience.app_id == app_id, Audience.name == name)
    if for_update:
        query = query.with_for_update()
    audience = await session.scalar(query)
    if audience is None:
        raise NotFoundError(f"no custom audience {name!r}")
    return audience
