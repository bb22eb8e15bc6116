"""Audience members resolved to installations, as bitmaps of 64 installations (AudienceBitmap).

Targeting asks "is this installation in the audience?" once per installation. Asked of the
member ids, PostgreSQL hashes every id of the audience; asked of the bitmaps, it tests one bit
of one of a few thousand rows (docs/decisions/0016-audience-bitmaps.md).

The bitmaps follow what they are resolved from:
- a new generation is resolved whole before it becomes current (build_generation);
- members added or removed re-resolve the installations that carry those ids
  (members_changed);
- an installation that is created or changes its custom id or advertising id is re-resolved in
  every audience of its app (installations_changed).

Both sides can change at once on PostgreSQL: a member written while an install takes that id
would be seen by neither transaction. So writers of members hold the app's lock exclusively
while they resolve, and re-resolved installations hold it shared: whichever resolves second
sees what the first committed. SQLite has one writer at a time and needs no lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    SelectBase,
    SQLColumnExpression,
    case,
    cast,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from clarion.audiences.models import (
    AUDIENCE_BITMAPS,
    Audience,
    AudienceBitmap,
    AudienceKind,
    AudienceMember,
)
from clarion.db import is_postgres, upsert_insert
from clarion.sdk.models import Installation

_LOCK_CLASS = 0x61756469  # pg_advisory_xact_lock's first key: "audi"
_COLUMNS = ["audience_id", "generation", "block", "bits"]


class _bit_or(FunctionElement[int]):
    """The OR of the BIGINTs aggregated. SQLite has no bit_or: there it is their sum, which is
    the same when no two share a bit, as the bits of distinct installations never do (and the
    sum of distinct powers of two, bit 63 negative, never leaves the 64-bit range)."""

    type = BigInteger()
    inherit_cache = True
    name = "bit_or"


@compiles(_bit_or, "postgresql")
def _bit_or_postgresql(element: _bit_or, compiler: SQLCompiler, **kw: Any) -> str:
    return f"bit_or({compiler.process(element.clauses, **kw)})"


@compiles(_bit_or, "sqlite")
def _bit_or_sqlite(element: _bit_or, compiler: SQLCompiler, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


def _block_of(installation_id: SQLColumnExpression[int]) -> SQLColumnExpression[int]:
    return installation_id.bitwise_rshift(literal_column("6"))


def _position(installation_id: SQLColumnExpression[int]) -> SQLColumnExpression[int]:
    # PostgreSQL shifts a bigint by an integer only.
    return cast(installation_id.bitwise_and(literal_column("63")), Integer)


def _bit_of(installation_id: SQLColumnExpression[int]) -> SQLColumnExpression[int]:
    """The installation's bit in its block's word."""
    one = cast(literal_column("1"), BigInteger)
    return one.bitwise_lshift(_position(installation_id))


def _holds(
    bits: SQLColumnExpression[int], installation_id: SQLColumnExpression[int]
) -> ColumnElement[bool]:
    """Whether the word of the installation's block has its bit set."""
    return bits.bitwise_rshift(_position(installation_id)).bitwise_and(literal_column("1")) == 1


def _identifier(kind: AudienceKind) -> SQLColumnExpression[str | None]:
    """The installation's id that audiences of this kind list."""
    column: SQLColumnExpression[Any] = {
        AudienceKind.CUSTOM_IDS: Installation.custom_id,
        AudienceKind.ADVERTISING_IDS: Installation.advertising_id,
        AudienceKind.INSTALL_IDS: Installation.install_id,
    }[kind]
    return column


# A bitmap row of its audience's current generation.
_current = (Audience.id == AudienceBitmap.audience_id) & (
    Audience.generation == AudienceBitmap.generation
)


def _identifier_by_kind() -> SQLColumnExpression[str | None]:
    return case(
        *((Audience.kind == kind.value, _identifier(kind)) for kind in AudienceKind),
        else_=None,
    )


async def build_generation(
    session: AsyncSession, *, audience: Audience, kind: AudienceKind, generation: int
) -> None:
    """Resolve a generation's members (written, not yet current) into its bitmaps."""
    await _lock(session, audience.app_id, shared=False)
    block = _block_of(Installation.id)
    # A join rather than EXISTS: each installation matches at most one member (ids are unique
    # in a generation), and the planner may then hash whichever side is smaller.
    rows = (
        select(
            literal(audience.id, BigInteger),
            literal(generation, Integer),
            block,
            _bit_or(_bit_of(Installation.id)),
        )
        .join(AudienceMember, AudienceMember.member_id == _identifier(kind))
        .where(
            Installation.app_id == audience.app_id,
            AudienceMember.audience_id == audience.id,
            AudienceMember.generation == generation,
        )
        .group_by(block)
    )
    await session.execute(AUDIENCE_BITMAPS.insert().from_select(_COLUMNS, rows))


async def members_changed(
    session: AsyncSession,
    *,
    audience: Audience,
    kind: AudienceKind,
    ids: SelectBase | Sequence[str],
) -> None:
    """Re-resolve, in the audience's current generation, the installations carrying these ids
    (members just added or removed; a superset does no harm)."""
    await _lock(session, audience.app_id, shared=False)
    carrying = select(Installation.id).where(
        Installation.app_id == audience.app_id, _identifier(kind).in_(ids)
    )
    await _reresolve(
        session, app_id=audience.app_id, installations=carrying, audience_id=audience.id
    )


async def installations_changed(
    session: AsyncSession,
    *,
    app_id: int,
    installation_ids: Sequence[int] = (),
    installations: Select[Any] | None = None,
) -> None:
    """Re-resolve these installations (created, or their custom or advertising id changed) in
    the current generation of every audience of the app: by id, or those a query selects."""
    if installations is None:
        if not installation_ids:
            return
        installations = select(Installation.id).where(Installation.id.in_(installation_ids))
    await _lock(session, app_id, shared=True)
    await _reresolve(session, app_id=app_id, installations=installations)


async def _reresolve(
    session: AsyncSession,
    *,
    app_id: int,
    installations: Select[Any],
    audience_id: int | None = None,
) -> None:
    """Clear the installations' bits, then set those of the ones that are members."""
    await session.flush()  # the audiences' generation and kind, as this session has them
    scope = Audience.app_id == app_id
    if audience_id is not None:
        scope = scope & (Audience.id == audience_id)
    chosen = Installation.id.in_(installations)

    block = _block_of(Installation.id)
    masks = (
        select(block.label("block"), _bit_or(_bit_of(Installation.id)).label("mask"))
        .where(chosen)
        .group_by(block)
        .subquery()
    )
    await session.execute(
        update(AudienceBitmap)
        .where(
            _current,
            scope,
            AudienceBitmap.block == masks.c.block,
            AudienceBitmap.bits.bitwise_and(masks.c.mask) != 0,
        )
        .values(bits=AudienceBitmap.bits.bitwise_and(masks.c.mask.bitwise_not()))
    )

    member = (
        select(AudienceMember.member_id)
        .where(
            AudienceMember.audience_id == Audience.id,
            AudienceMember.generation == Audience.generation,
            AudienceMember.member_id == _identifier_by_kind(),
        )
        .exists()
    )
    rows = (
        select(Audience.id, Audience.generation, block, _bit_or(_bit_of(Installation.id)))
        .join(Audience, Audience.app_id == Installation.app_id)
        .where(chosen, scope, Audience.generation >= 0, member)
        .group_by(Audience.id, Audience.generation, block)
        # Rows locked in one order, so that two installations of a block resolved at once
        # wait for each other rather than deadlock.
        .order_by(Audience.id, block)
    )
    insert = upsert_insert(session, AudienceBitmap)
    await session.execute(
        insert.from_select(_COLUMNS, rows).on_conflict_do_update(
            index_elements=["audience_id", "generation", "block"],
            set_={"bits": AudienceBitmap.bits.bitwise_or(insert.excluded.bits)},
        )
    )


async def _lock(session: AsyncSession, app_id: int, *, shared: bool) -> None:
    if not is_postgres(session):
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await session.execute(
        text(f"SELECT {function}(:kind, :app)"), {"kind": _LOCK_CLASS, "app": app_id}
    )


async def drop_bitmaps(
    session: AsyncSession, audience_id: int, *, before: int | None = None
) -> None:
    """Delete the audience's bitmaps (of the generations before `before`, if given)."""
    statement = AUDIENCE_BITMAPS.delete().where(AudienceBitmap.audience_id == audience_id)
    if before is not None:
        statement = statement.where(AudienceBitmap.generation < before)
    await session.execute(statement)


def member_of_any(*, app_id: int, names: list[str]) -> ColumnElement[bool]:
    """True for installations in at least one of these audiences (their current members): one
    bit test per installation, whatever the id kind each audience holds."""
    return (
        select(AudienceBitmap.block)
        .join(Audience, _current)
        .where(
            Audience.app_id == app_id,
            Audience.name.in_(names),
            AudienceBitmap.block == _block_of(Installation.id),
            _holds(AudienceBitmap.bits, Installation.id),
        )
        .correlate(Installation)
        .exists()
    )


__all__ = [
    "build_generation",
    "drop_bitmaps",
    "installations_changed",
    "member_of_any",
    "members_changed",
]
