"""Custom audiences: replace, update, read, list and delete (targeting reads them as
clarion.audiences.resolved keeps them).

Writes of the API (at most 10,000 ids a call) are applied within the call: the indexing token
they answer with is APPLIED at once, and REPLACED once a later replace supersedes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, delete, func, literal, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.audiences.models import (
    AUDIENCE_MEMBERS,
    Audience,
    AudienceIndexing,
    AudienceKind,
    AudienceMember,
    IndexingState,
)
from clarion.audiences.resolved import build_generation, drop_bitmaps, members_changed
from clarion.audiences.schemas import AudienceRead
from clarion.audiences.staging import IdSpool, copy_members, drop_staging, load_staging
from clarion.db import insert_ignoring_conflicts, rowcount, upsert_insert
from clarion.errors import MalformedParameterError, NotFoundError
from clarion.formats import wire_date

# One member: its id, and (API 1.1) its attributes and tags.
Member = tuple[str, dict[str, Any] | None, list[str] | None]
# One change of an update: "add" or "remove", then the member.
Change = tuple[str, str, dict[str, Any] | None, list[str] | None]


class MembersChanged(NamedTuple):
    indexing_token: str
    added: int
    removed: int
    nb_ids: int  # the audience's size after the change


# An INSERT ... SELECT reports its row count only when asked (psycopg answers -1 otherwise).
_COUNTED = {"preserve_rowcount": True}
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
    audience = await _create_or_lock(session, app_id, name, kind, now)
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
    await build_generation(session, audience=audience, kind=kind, generation=generation)
    await _switch(session, audience, generation, kind, nb_ids=len(unique), now=now)
    if description is not None:
        audience.description = description
    return _indexing(session, audience, now)


async def replace_from_spool(
    session: AsyncSession,
    *,
    app_id: int,
    name: str,
    kind: AudienceKind,
    spool: IdSpool,
    now: datetime,
) -> tuple[str, int]:
    """Replace the audience's members by the spooled ids (clarion.audiences.staging),
    atomically; returns the indexing token and the number of distinct ids."""
    audience = await _create_or_lock(session, app_id, name, kind, now)
    generation = audience.generation + 1
    nb_ids = await copy_members(
        session, audience_id=audience.id, generation=generation, spool=spool
    )
    if nb_ids is None:  # SQLite, or ids repeated: through the staging table, without repeats
        staging = await load_staging(session, spool)
        columns = ["audience_id", "generation", "member_id"]
        rows = select(literal(audience.id), literal(generation), staging.c.member_id)
        inserted = await session.execute(
            insert_ignoring_conflicts(session, AUDIENCE_MEMBERS, index=columns).from_select(
                columns, rows.where(true())
            ),
            execution_options=_COUNTED,
        )
        await drop_staging(session)
        nb_ids = rowcount(inserted)
    await build_generation(session, audience=audience, kind=kind, generation=generation)
    await _switch(session, audience, generation, kind, nb_ids=nb_ids, now=now)
    return _indexing(session, audience, now), nb_ids


async def change_members(
    session: AsyncSession,
    *,
    app_id: int,
    name: str,
    kind: AudienceKind,
    added: Select[Any],
    removed: Select[Any],
    now: datetime,
) -> MembersChanged:
    """Add the ids `added` selects and remove those `removed` selects, creating the audience if
    need be."""
    audience = await _create_or_lock(session, app_id, name, kind, now)
    if audience.generation < 0:
        audience.generation = 0
    elif audience.kind != kind.value:
        raise MalformedParameterError(f"audience {name!r} holds {audience.kind}, not {kind.value}")
    columns = ["audience_id", "generation", "member_id"]
    rows = select(literal(audience.id), literal(audience.generation), added.subquery().c[0])
    inserted = await session.execute(
        insert_ignoring_conflicts(session, AUDIENCE_MEMBERS, index=columns).from_select(
            columns, rows.where(true())
        ),
        execution_options=_COUNTED,
    )
    deleted = await session.execute(
        delete(AudienceMember).where(
            AudienceMember.audience_id == audience.id,
            AudienceMember.generation == audience.generation,
            AudienceMember.member_id.in_(removed),
        )
    )
    audience.kind = kind.value
    await members_changed(session, audience=audience, kind=kind, ids=added.union(removed))
    audience.nb_ids = await _count(session, audience)
    audience.updated_at = now
    return MembersChanged(
        indexing_token=_indexing(session, audience, now),
        added=rowcount(inserted),
        removed=rowcount(deleted),
        nb_ids=audience.nb_ids,
    )


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
    changed = list(final)
    for start in range(0, len(changed), _CHUNK):
        await members_changed(
            session, audience=audience, kind=kind, ids=changed[start : start + _CHUNK]
        )
    audience.nb_ids = await _count(session, audience)
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
    await drop_bitmaps(session, audience.id)
    await session.execute(
        delete(AudienceIndexing).where(AudienceIndexing.audience_id == audience.id)
    )
    await session.delete(audience)


async def identity(session: AsyncSession, *, app_id: int, name: str) -> tuple[int, int] | None:
    """The audience's id and current generation (as this session has them, changes not yet
    flushed included), None if there is no such audience."""
    audience = await session.scalar(
        select(Audience).where(Audience.app_id == app_id, Audience.name == name)
    )
    return None if audience is None else (audience.id, audience.generation)


async def missing_audiences(session: AsyncSession, *, app_id: int, names: list[str]) -> list[str]:
    """The names among `names` that are not audiences of the app, in their order."""
    found = set(
        await session.scalars(
            select(Audience.name).where(Audience.app_id == app_id, Audience.name.in_(names))
        )
    )
    return [name for name in names if name not in found]


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


async def _create_or_lock(
    session: AsyncSession, app_id: int, name: str, kind: AudienceKind, now: datetime
) -> Audience:
    """The audience, locked for this transaction; created empty (generation -1) if new."""
    await session.execute(
        insert_ignoring_conflicts(session, Audience, index=["app_id", "name"]).values(
            app_id=app_id, name=name, kind=kind.value, generation=-1, created_at=now
        )
    )
    return await _find(session, app_id, name, for_update=True)


async def _switch(
    session: AsyncSession,
    audience: Audience,
    generation: int,
    kind: AudienceKind,
    *,
    nb_ids: int,
    now: datetime,
) -> None:
    """Make `generation` the members targeting sees, and drop the ones before it."""
    await session.execute(
        delete(AudienceMember).where(
            AudienceMember.audience_id == audience.id, AudienceMember.generation < generation
        )
    )
    await drop_bitmaps(session, audience.id, before=generation)
    audience.generation = generation
    audience.kind = kind.value
    audience.nb_ids = nb_ids
    audience.updated_at = now


async def _count(session: AsyncSession, audience: Audience) -> int:
    members = await session.scalar(
        select(func.count())
        .select_from(AudienceMember)
        .where(
            AudienceMember.audience_id == audience.id,
            AudienceMember.generation == audience.generation,
        )
    )
    return members or 0


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
