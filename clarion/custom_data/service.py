"""Custom Data API: set, merge, overwrite and delete what is known about users (profiles).

A call is applied in the request's transaction: all of it or none of it. Its operations are first
gathered by kind (`_Changes`), then applied kind by kind with set-based statements whatever the
number of users (up to 10,000): on PostgreSQL one statement per kind, its rows bound as JSON
arrays that the statement expands (and joins on the primary key to delete); on SQLite, IN (...)
deletes and executemany inserts.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Table, TextClause, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.custom_data.models import PROFILE_ATTRIBUTES, PROFILE_TAGS, AttributeKind
from clarion.custom_data.schemas import (
    ChangeTags,
    DeleteAttribute,
    Operation,
    ReplaceTags,
    SetAttribute,
)
from clarion.db import bulk_insert, uses_arrays, utcnow
from clarion.errors import MalformedParameterError
from clarion.formats import IdType
from clarion.gdpr.service import blocked_values

# Users per IN (...) list: well under SQLite's limit on bound parameters.
_CHUNK = 5_000


@dataclass(slots=True)
class _Changes:
    """A call's operations gathered by kind, one tuple per row touched. They are applied in this
    order, deletes first: an attribute deleted and set again in one call, or a collection
    replaced, ends with the new values."""

    overwritten: list[str] = field(default_factory=list)  # users whose profile is replaced
    removed_attributes: list[tuple[str, str]] = field(default_factory=list)  # (user, name)
    # (user, collection, its new tags): the collection's other tags are removed.
    replaced_collections: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    removed_tags: list[tuple[str, str, str]] = field(default_factory=list)  # (user, coll., tag)
    # (user, name, kind, text, number)
    attributes: list[tuple[str, str, str, str | None, float | None]] = field(default_factory=list)
    added_tags: list[tuple[str, str, str]] = field(default_factory=list)  # (user, coll., tag)
    # NaN or an infinity among the numbers (a JSON body may spell them): rare, and JSON, in
    # which PostgreSQL receives them, has no spelling for them (see _apply_postgresql).
    non_finite: bool = False


def _gather(updates: Sequence[tuple[str, bool, list[Operation]]]) -> _Changes:
    changes = _Changes()
    attributes, added_tags = changes.attributes, changes.added_tags
    for custom_id, overwrite, operations in updates:
        if overwrite:
            changes.overwritten.append(custom_id)
        for op in operations:
            if isinstance(op, SetAttribute):
                number = op.number
                if number is not None and not math.isfinite(number):
                    changes.non_finite = True
                attributes.append((custom_id, op.name, op.kind.value, op.text, number))
            elif isinstance(op, DeleteAttribute):
                changes.removed_attributes.append((custom_id, op.name))
            elif isinstance(op, ReplaceTags):
                changes.replaced_collections.append((custom_id, op.collection, op.tags))
                added_tags += [(custom_id, op.collection, tag) for tag in op.tags]
            elif isinstance(op, ChangeTags):
                changes.removed_tags += [(custom_id, op.collection, tag) for tag in op.remove]
                added_tags += [(custom_id, op.collection, tag) for tag in op.add]
    return changes


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
    # Users in id order: rows then reach the primary key's B-tree in order (~7% less PostgreSQL
    # CPU for a call of new users, measured), and two calls touching the same users lock their
    # rows in the same order instead of risking a deadlock.
    changes = _gather(sorted(updates, key=itemgetter(0)))
    if uses_arrays(session):
        await _apply_postgresql(session, app_id, changes, now)
    else:
        await _apply_sqlite(session, app_id, changes, now)
    return str(uuid.uuid4())


async def delete_profiles(session: AsyncSession, *, app_id: int, custom_ids: Sequence[str]) -> str:
    """Forget everything known about these users; returns the call's token."""
    if uses_arrays(session):
        await _delete_users_postgresql(session, app_id, custom_ids)
    else:
        await _delete_users_sqlite(session, app_id, custom_ids)
    return str(uuid.uuid4())


# PostgreSQL: one statement per kind of change. Its rows are bound column by column, each
# column as one JSON array that `ROWS FROM (json_array_elements_text(...), ...)` zips back into
# rows. Measured per 50,000 attribute rows: ~30 ms of Python (orjson) and ~1.0 s of PostgreSQL,
# most of it maintaining the table's three indexes; COPY into a temporary table took ~200 ms of
# Python (psycopg's write_row) and ~1.1 s of PostgreSQL with the table's creation and drop, one
# array per column ~250 ms of Python (psycopg dumps arrays item by item), one JSON array of rows
# ~1.2 s of PostgreSQL (`row->>n` parses the row's text again for each column).
#
# Deletes join those rows on the primary key: the planner takes a set-returning function for
# 100 rows and probes the key per row (or, while the table's statistics say it is small, hashes
# the rows and reads the app's rows once: linear in the table). Not `custom_id = ANY(:users)`,
# which is quadratic: psycopg prepares a statement once it has run 5 times, PostgreSQL then
# moves to a generic plan, and the one it chooses on a fresh table reads the whole collection
# through (app_id, collection, tag) and compares each tag row with the 5,000 ids one by one (an
# array parameter is not hashed): 15-22 s per call once the table holds 100,000 tags.
#
# Their other columns are compared as expressions (`name || ''`), which no index can serve, so
# that the only way in is the primary key's (app_id, custom_id): while a table has no
# statistics (before its first ANALYZE), the planner rates (app_id, collection) of the tags'
# index as selective as the key and took it, reading every user's tags of the collection for
# each row: a call of new users then took 70 s once the table held 640,000 tags.


@dataclass(frozen=True, slots=True)
class _RowsStatement:
    """A statement over rows whose columns are bound as `:<column>`, one JSON array each."""

    sql: TextClause
    columns: tuple[str, ...]


def _rows_statement(sql: str, *columns: str, json_column: str = "") -> _RowsStatement:
    """`sql` with `{rows}` replaced by the rows, as `r`; each column is text, except
    `json_column`, whose items are JSON values themselves."""
    expanded = ", ".join(
        f"json_array_elements{'' if column == json_column else '_text'}(CAST(:{column} AS json))"
        for column in columns
    )
    rows = f"ROWS FROM ({expanded}) AS r({', '.join(columns)})"
    return _RowsStatement(text(sql.format(rows=rows)), columns)


_DELETE_USERS_ATTRIBUTES = _rows_statement(
    "DELETE FROM profile_attributes AS a USING {rows} "
    "WHERE a.app_id = :app_id AND a.custom_id = r.custom_id",
    "custom_id",
)
_DELETE_USERS_TAGS = _rows_statement(
    "DELETE FROM profile_tags AS t USING {rows} "
    "WHERE t.app_id = :app_id AND t.custom_id = r.custom_id",
    "custom_id",
)
_DELETE_ATTRIBUTES = _rows_statement(
    "DELETE FROM profile_attributes AS a USING {rows} "
    "WHERE a.app_id = :app_id AND a.custom_id = r.custom_id AND a.name || '' = r.name",
    "custom_id",
    "name",
)
# A tag sent again is kept rather than deleted and inserted anew: re-sending a profile then
# writes nothing for its tags.
_DELETE_REPLACED_TAGS = _rows_statement(
    "DELETE FROM profile_tags AS t USING {rows} "
    "WHERE t.app_id = :app_id AND t.custom_id = r.custom_id AND t.collection || '' = r.collection "
    "AND t.tag NOT IN (SELECT json_array_elements_text(r.tags))",
    "custom_id",
    "collection",
    "tags",
    json_column="tags",
)
_DELETE_TAGS = _rows_statement(
    "DELETE FROM profile_tags AS t USING {rows} "
    "WHERE t.app_id = :app_id AND t.custom_id = r.custom_id AND t.collection || '' = r.collection "
    "AND t.tag || '' = r.tag",
    "custom_id",
    "collection",
    "tag",
)
_UPSERT_ATTRIBUTES = _rows_statement(
    "INSERT INTO profile_attributes "
    "(app_id, custom_id, name, kind, text_value, number_value, updated_at) "
    "SELECT :app_id, r.custom_id, r.name, r.kind, r.text_value, "
    "CAST(r.number_value AS float8), :now FROM {rows} "
    "ON CONFLICT (app_id, custom_id, name) DO UPDATE SET kind = excluded.kind, "
    "text_value = excluded.text_value, number_value = excluded.number_value, "
    "updated_at = excluded.updated_at",
    "custom_id",
    "name",
    "kind",
    "text_value",
    "number_value",
)
_INSERT_TAGS = _rows_statement(
    "INSERT INTO profile_tags (app_id, custom_id, collection, tag) "
    "SELECT :app_id, r.custom_id, r.collection, r.tag FROM {rows} "
    "ON CONFLICT (app_id, custom_id, collection, tag) DO NOTHING",
    "custom_id",
    "collection",
    "tag",
)


async def _apply_postgresql(
    session: AsyncSession, app_id: int, changes: _Changes, now: datetime
) -> None:
    await _delete_users_postgresql(session, app_id, changes.overwritten)
    await _execute_for_rows(session, _DELETE_ATTRIBUTES, changes.removed_attributes, app_id=app_id)
    await _execute_for_rows(
        session, _DELETE_REPLACED_TAGS, changes.replaced_collections, app_id=app_id
    )
    await _execute_for_rows(session, _DELETE_TAGS, changes.removed_tags, app_id=app_id)
    # After the deletes, so that a collection replaced by a call keeps the new tags.
    attributes: Sequence[tuple[object, ...]] = changes.attributes
    if changes.non_finite:
        # JSON has no NaN nor infinities (orjson writes null): spelled as text ("nan", "inf"),
        # which PostgreSQL reads back as float8.
        attributes = [
            (*row[:4], row[4] if row[4] is None or math.isfinite(row[4]) else str(row[4]))
            for row in changes.attributes
        ]
    await _execute_for_rows(session, _UPSERT_ATTRIBUTES, attributes, app_id=app_id, now=now)
    await _execute_for_rows(session, _INSERT_TAGS, changes.added_tags, app_id=app_id)


async def _delete_users_postgresql(
    session: AsyncSession, app_id: int, custom_ids: Sequence[str]
) -> None:
    users = [(custom_id,) for custom_id in custom_ids]
    for statement in (_DELETE_USERS_ATTRIBUTES, _DELETE_USERS_TAGS):
        await _execute_for_rows(session, statement, users, app_id=app_id)


async def _execute_for_rows(
    session: AsyncSession,
    statement: _RowsStatement,
    rows: Sequence[tuple[object, ...]],
    **params: object,
) -> None:
    if not rows:
        return
    for column, values in zip(statement.columns, zip(*rows, strict=True), strict=True):
        params[column] = orjson.dumps(values).decode()
    await session.execute(statement.sql, params)


# SQLite: IN (...) deletes grouped by what they remove, over chunks of users, then executemany
# inserts (clarion.db.bulk_insert). A statement costs microseconds there: no round trips.

_ATTRIBUTES, _TAGS = PROFILE_ATTRIBUTES.c, PROFILE_TAGS.c


async def _apply_sqlite(
    session: AsyncSession, app_id: int, changes: _Changes, now: datetime
) -> None:
    await _delete_users_sqlite(session, app_id, changes.overwritten)
    removed: dict[str, list[str]] = defaultdict(list)  # attribute name -> users
    for custom_id, name in changes.removed_attributes:
        removed[name].append(custom_id)
    for name, users in removed.items():
        await _delete_for_users(
            session, PROFILE_ATTRIBUTES, app_id, users, _ATTRIBUTES.name == name
        )
    cleared: dict[str, list[str]] = defaultdict(list)  # collection -> users
    for custom_id, collection, _ in changes.replaced_collections:
        cleared[collection].append(custom_id)
    for collection, users in cleared.items():
        await _delete_for_users(
            session, PROFILE_TAGS, app_id, users, _TAGS.collection == collection
        )
    untagged: dict[tuple[str, str], list[str]] = defaultdict(list)  # (coll., tag) -> users
    for custom_id, collection, tag in changes.removed_tags:
        untagged[(collection, tag)].append(custom_id)
    for (collection, tag), users in untagged.items():
        await _delete_for_users(
            session, PROFILE_TAGS, app_id, users, _TAGS.collection == collection, _TAGS.tag == tag
        )
    await bulk_insert(
        session,
        PROFILE_ATTRIBUTES.name,
        ("app_id", "custom_id", "name", "kind", "text_value", "number_value", "updated_at"),
        [(app_id, *row, now) for row in changes.attributes],
        conflict=("app_id", "custom_id", "name"),
        update=("kind", "text_value", "number_value", "updated_at"),
    )
    await bulk_insert(
        session,
        PROFILE_TAGS.name,
        ("app_id", "custom_id", "collection", "tag"),
        [(app_id, *row) for row in changes.added_tags],
        conflict=("app_id", "custom_id", "collection", "tag"),
    )


async def _delete_users_sqlite(
    session: AsyncSession, app_id: int, custom_ids: Sequence[str]
) -> None:
    for table in (PROFILE_ATTRIBUTES, PROFILE_TAGS):
        await _delete_for_users(session, table, app_id, custom_ids)


async def _delete_for_users(
    session: AsyncSession,
    table: Table,
    app_id: int,
    users: Sequence[str],
    *conditions: ColumnElement[bool],
) -> None:
    for start in range(0, len(users), _CHUNK):
        chunk = users[start : start + _CHUNK]
        await session.execute(
            table.delete().where(
                table.c.app_id == app_id, table.c.custom_id.in_(chunk), *conditions
            )
        )


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
        for custom_id, name, kind, text_value, number in rows:
            found[custom_id][name] = _typed(kind, text_value, number)
    return found


def _typed(kind: str, text_value: str | None, number: float | None) -> Any:
    if kind == AttributeKind.BOOLEAN:
        return bool(number)
    if kind == AttributeKind.INTEGER and number is not None:
        return int(number)
    if kind == AttributeKind.FLOAT:
        return number
    return text_value  # strings, URLs, and dates as ISO 8601
