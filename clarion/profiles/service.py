"""Custom Data API: set, merge, overwrite and delete what is known about users (profiles).

A call is applied in the request's transaction with a few set-based statements, whatever the
number of users (up to 10,000): all of it or none of it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Delete, String, Table, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.db import bulk_insert, in_values, uses_arrays, utcnow
from clarion.errors import MalformedParameterError
from clarion.gdpr.models import IdType
from clarion.gdpr.service import blocked_values
from clarion.profiles.models import PROFILE_ATTRIBUTES, PROFILE_TAGS, AttributeKind
from clarion.profiles.schemas import (
    ChangeTags,
    DeleteAttribute,
    Operation,
    ReplaceTags,
    SetAttribute,
)

_ATTRIBUTE_COLUMNS = (
    "app_id",
    "custom_id",
    "name",
    "kind",
    "text_value",
    "number_value",
    "updated_at",
)
# Users per IN (...) list: well under SQLite's limit on bound parameters.
_CHUNK = 5_000


# Deletes are grouped by what they remove (an attribute name, a collection, a tag) and run as
# `custom_id IN (...)` over chunks of users: one statement per group and chunk. Per-row
# executemany deletes were planned once by PostgreSQL (psycopg prepares repeated statements) as a
# sequential scan while the table was small, and then took minutes once it had grown.


@dataclass(frozen=True, slots=True)
class _Deletes:
    attribute: Delete
    collection: Delete
    tag: Delete
    users: tuple[Delete, Delete]  # everything of a user: attributes, then tags


def _deletes(*, array: bool) -> _Deletes:
    def of_users(table: Table) -> ColumnElement[bool]:
        return (table.c.app_id == bindparam("app_id")) & in_values(
            table.c.custom_id, "users", String(), array=array
        )

    attributes, tags = PROFILE_ATTRIBUTES, PROFILE_TAGS
    return _Deletes(
        attribute=delete(attributes).where(
            of_users(attributes), attributes.c.name == bindparam("name")
        ),
        collection=delete(tags).where(of_users(tags), tags.c.collection == bindparam("collection")),
        tag=delete(tags).where(
            of_users(tags),
            tags.c.collection == bindparam("collection"),
            tags.c.tag == bindparam("tag"),
        ),
        users=(delete(attributes).where(of_users(attributes)), delete(tags).where(of_users(tags))),
    )


_DELETES = {array: _deletes(array=array) for array in (False, True)}


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
    # Users removed by a GDPR request: what arrives for them is ignored for a while.
    blocked = await blocked_values(
        session, app_id=app_id, id_type=IdType.CUSTOM_ID, values=seen, now=now
    )
    if blocked:
        updates = [update for update in updates if update[0] not in blocked]
    await delete_profiles(session, app_id=app_id, custom_ids=[c for c, o, _ in updates if o])

    removed: dict[str, list[str]] = defaultdict(list)  # attribute name -> users
    attributes: list[tuple[object, ...]] = []
    cleared: dict[str, list[str]] = defaultdict(list)  # collection -> users
    untagged: dict[tuple[str, str], list[str]] = defaultdict(list)  # (collection, tag) -> users
    tagged: list[tuple[object, ...]] = []
    for custom_id, _, operations in updates:
        for op in operations:
            if isinstance(op, DeleteAttribute):
                removed[op.name].append(custom_id)
            elif isinstance(op, SetAttribute):
                attributes.append(
                    (app_id, custom_id, op.name, op.kind.value, op.text, op.number, now)
                )
            elif isinstance(op, ReplaceTags):
                cleared[op.collection].append(custom_id)
                tagged += [(app_id, custom_id, op.collection, tag) for tag in op.tags]
            elif isinstance(op, ChangeTags):
                for tag in op.remove:
                    untagged[(op.collection, tag)].append(custom_id)
                tagged += [(app_id, custom_id, op.collection, tag) for tag in op.add]

    deletes = _DELETES[uses_arrays(session)]
    for name, users in removed.items():
        await _delete_for_users(session, deletes.attribute, users, app_id=app_id, name=name)
    for collection, users in cleared.items():
        await _delete_for_users(
            session, deletes.collection, users, app_id=app_id, collection=collection
        )
    for (collection, tag), users in untagged.items():
        await _delete_for_users(
            session, deletes.tag, users, app_id=app_id, collection=collection, tag=tag
        )
    # Set after the deletes above, so that a collection replaced by a call keeps the new tags.
    await bulk_insert(
        session,
        PROFILE_ATTRIBUTES.name,
        _ATTRIBUTE_COLUMNS,
        attributes,
        conflict=("app_id", "custom_id", "name"),
        update=("kind", "text_value", "number_value", "updated_at"),
    )
    await bulk_insert(
        session,
        PROFILE_TAGS.name,
        ("app_id", "custom_id", "collection", "tag"),
        tagged,
        conflict=("app_id", "custom_id", "collection", "tag"),
    )
    return str(uuid.uuid4())


async def delete_profiles(session: AsyncSession, *, app_id: int, custom_ids: Sequence[str]) -> str:
    """Forget everything known about these users; returns the call's token."""
    for statement in _DELETES[uses_arrays(session)].users:
        await _delete_for_users(session, statement, list(custom_ids), app_id=app_id)
    return str(uuid.uuid4())


async def _delete_for_users(
    session: AsyncSession, statement: Any, users: list[str], **params: object
) -> None:
    for start in range(0, len(users), _CHUNK):
        await session.execute(statement, {**params, "users": users[start : start + _CHUNK]})


async def attributes_of(
    session: AsyncSession, *, app_id: int, custom_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Each user's attributes as typed values ({custom_id: {name: value}}), for templates."""
    found: dict[str, dict[str, Any]] = defaultdict(dict)
    table = PROFILE_ATTRIBUTES.c
    unique = list(dict.fromkeys(custom_ids))
    for start in range(0, len(unique), _CHUNK):
        rows = await session.execute(
            select(
                table.custom_id, table.name, table.kind, table.text_value, table.number_value
            ).where(table.app_id == app_id, table.custom_id.in_(unique[start : start + _CHUNK]))
        )
        for custom_id, name, kind, text, number in rows:
            found[custom_id][name] = _typed(kind, text, number)
    return found


def _typed(kind: str, text: str | None, number: float | None) -> Any:
    if kind == AttributeKind.BOOLEAN:
        return bool(number)
    if kind == AttributeKind.INTEGER and number is not None:
        return int(number)
    if kind == AttributeKind.FLOAT:
        return number
    return text  # strings, URLs, and dates as ISO 8601
