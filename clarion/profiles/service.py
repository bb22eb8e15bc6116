"""Custom Data API: set, merge, overwrite and delete what is known about users (profiles).

A call is applied in the request's transaction with a few set-based statements, whatever the
number of users (up to 10,000): all of it or none of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import and_, bindparam, delete
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.db import insert_ignoring_conflicts, upsert, utcnow
from clarion.errors import MalformedParameterError
from clarion.profiles.models import PROFILE_ATTRIBUTES, PROFILE_TAGS
from clarion.profiles.schemas import (
    ChangeTags,
    DeleteAttribute,
    Operation,
    ReplaceTags,
    SetAttribute,
)

# Users per IN (...) list: well under SQLite's limit on bound parameters.
_CHUNK = 5_000

_DELETE_ATTRIBUTE = delete(PROFILE_ATTRIBUTES).where(
    PROFILE_ATTRIBUTES.c.app_id == bindparam("a"),
    PROFILE_ATTRIBUTES.c.custom_id == bindparam("c"),
    PROFILE_ATTRIBUTES.c.name == bindparam("n"),
)
_CLEAR_COLLECTION = delete(PROFILE_TAGS).where(
    PROFILE_TAGS.c.app_id == bindparam("a"),
    PROFILE_TAGS.c.custom_id == bindparam("c"),
    PROFILE_TAGS.c.collection == bindparam("n"),
)
_REMOVE_TAG = delete(PROFILE_TAGS).where(
    and_(
        PROFILE_TAGS.c.app_id == bindparam("a"),
        PROFILE_TAGS.c.custom_id == bindparam("c"),
        PROFILE_TAGS.c.collection == bindparam("n"),
        PROFILE_TAGS.c.tag == bindparam("t"),
    )
)


async def update_profiles(
    session: AsyncSession, *, app_id: int, updates: Sequence[tuple[str, bool, list[Operation]]]
) -> str:
    """Apply (custom id, overwrite, operations) per user; returns the call's token."""
    seen: set[str] = set()
    for custom_id, _, _ in updates:
        if custom_id in seen:
            raise MalformedParameterError(f"id: {custom_id!r} appears more than once")
        seen.add(custom_id)
    now = utcnow()
    await delete_profiles(session, app_id=app_id, custom_ids=[c for c, o, _ in updates if o])

    removed: list[dict[str, object]] = []
    attributes: list[dict[str, object]] = []
    cleared: list[dict[str, object]] = []
    untagged: list[dict[str, object]] = []
    tagged: list[dict[str, object]] = []
    for custom_id, _, operations in updates:
        key = {"a": app_id, "c": custom_id}
        for op in operations:
            if isinstance(op, DeleteAttribute):
                removed.append({**key, "n": op.name})
            elif isinstance(op, SetAttribute):
                attributes.append(
                    {
                        "app_id": app_id,
                        "custom_id": custom_id,
                        "name": op.name,
                        "kind": op.kind.value,
                        "text_value": op.text,
                        "number_value": op.number,
                        "updated_at": now,
                    }
                )
            elif isinstance(op, ReplaceTags):
                cleared.append({**key, "n": op.collection})
                tagged += [_tag(app_id, custom_id, op.collection, tag) for tag in op.tags]
            elif isinstance(op, ChangeTags):
                untagged += [{**key, "n": op.collection, "t": tag} for tag in op.remove]
                tagged += [_tag(app_id, custom_id, op.collection, tag) for tag in op.add]

    if removed:
        await session.execute(_DELETE_ATTRIBUTE, removed)
    if attributes:
        statement = upsert(
            session,
            PROFILE_ATTRIBUTES,
            index=["app_id", "custom_id", "name"],
            update=["kind", "text_value", "number_value", "updated_at"],
        )
        await session.execute(statement, attributes)
    if cleared:
        await session.execute(_CLEAR_COLLECTION, cleared)
    if untagged:
        await session.execute(_REMOVE_TAG, untagged)
    if tagged:
        statement = insert_ignoring_conflicts(
            session, PROFILE_TAGS, index=["app_id", "custom_id", "collection", "tag"]
        )
        await session.execute(statement, tagged)
    return str(uuid.uuid4())


async def delete_profiles(session: AsyncSession, *, app_id: int, custom_ids: Sequence[str]) -> str:
    """Forget everything known about these users; returns the call's token."""
    for start in range(0, len(custom_ids), _CHUNK):
        chunk = list(custom_ids[start : start + _CHUNK])
        for table in (PROFILE_ATTRIBUTES, PROFILE_TAGS):
            await session.execute(
                delete(table).where(table.c.app_id == app_id, table.c.custom_id.in_(chunk))
            )
    return str(uuid.uuid4())


def _tag(app_id: int, custom_id: str, collection: str, tag: str) -> dict[str, object]:
    return {"app_id": app_id, "custom_id": custom_id, "collection": collection, "tag": tag}
