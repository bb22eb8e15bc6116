"""Database plumbing: engine, sessions, the declarative base, and column types shared by domains.
SQL functions compiled per dialect and the in-loop SQLite driver: clarion.dialects.

Services never commit: the request's session dependency (clarion.http.get_session) or
`transaction` below (workers, the send intake, the campaign scheduler) owns the transaction.
See docs/decisions/0005-unit-of-work.md.

Never open a database session while holding one (docs/conventions.md): on SQLite the second
waits for the one pooled connection that the first holds. `create_engine` gives engines a pool
that refuses it at once (NestedSessionError), always on SQLite and on PostgreSQL when asked
(`check_nested`, CLARION_CHECK_NESTED_SESSIONS; the tests set it): decision 0033.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    MetaData,
    any_,
    bindparam,
    event,
)
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.types import JSON, TypeDecorator, TypeEngine

# Explicit constraint names: stable across SQLite and PostgreSQL, and needed by Alembic's batch
# mode on SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonValue = JSON(none_as_null=True)


def in_values(
    column: Any, name: str, item_type: TypeEngine[Any], *, array: bool
) -> ColumnElement[bool]:
    """`column IN (...)` over a list bound at execution as `name`.

    array=True (PostgreSQL): `column = ANY(:name)` with one array parameter. An expanding list
    of thousands of placeholders is rendered again by SQLAlchemy and parsed again by psycopg
    (too long for its statement cache) at every execution: measured, ~20 % of the delivery
    worker's CPU per notification and of the Custom Data API's. array=False (SQLite): an
    expanding list, chunked by the caller under SQLite's limit on bound parameters."""
    if array:
        result: ColumnElement[bool] = column == any_(bindparam(name, type_=ARRAY(item_type)))
        return result
    return cast(ColumnElement[bool], column.in_(bindparam(name, expanding=True)))


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def uses_arrays(session: AsyncSession) -> bool:
    """Whether in_values(array=True) statements suit the session's database."""
    return is_postgres(session)


def upsert_insert(session: AsyncSession, table: Any) -> Any:
    """The session's dialect's INSERT, which takes `.on_conflict_do_nothing/_do_update(...)`
    (the same API on SQLite and PostgreSQL)."""
    if is_postgres(session):
        return pg_insert(table)
    return sqlite_insert(table)


def insert_ignoring_conflicts(session: AsyncSession, table: Any, *, index: list[str]) -> Any:
    """`INSERT ... ON CONFLICT (index) DO NOTHING` for the session's database."""
    return upsert_insert(session, table).on_conflict_do_nothing(index_elements=index)


async def bulk_insert(
    session: AsyncSession,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: Sequence[str] = (),
    update: Sequence[str] = (),
) -> None:
    """Append rows through the driver on the session's own connection (same transaction).

    The event log takes one row per notification, so this is the hot write: PostgreSQL gets
    COPY (~400k rows/s here), SQLite a plain executemany (~600k rows/s). SQLAlchemy's
    insert() with a list of dicts measured 43 µs/row on aiosqlite, a whole notification's
    budget, and psycopg's pipelined executemany ~30 µs/row. Datetimes must be timezone-aware UTC.

    With `conflict` (the columns of a unique index), a row that exists already is updated with
    its `update` columns, or left as it is when `update` is empty. PostgreSQL then COPYs into a
    temporary table and upserts from it in one statement.
    """
    if not rows:
        return
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    assert raw is not None
    names = ", ".join(columns)
    on_conflict = ""
    if conflict:
        action = (
            "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)
            if update
            else "DO NOTHING"
        )
        on_conflict = f" ON CONFLICT ({', '.join(conflict)}) {action}"
    if connection.dialect.name == "postgresql":
        target = f"staged_{table}" if conflict else table
        async with raw.cursor() as cursor:
            if conflict:
                await cursor.execute(
                    f"CREATE TEMPORARY TABLE {target} (LIKE {table}) ON COMMIT DROP"
                )
            async with cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
                for row in rows:
                    await copy.write_row(row)
            if conflict:
                await cursor.execute(
                    f"INSERT INTO {table} ({names}) SELECT {names} FROM {target}{on_conflict}"
                )
                await cursor.execute(f"DROP TABLE {target}")
        return
    # Stored as SQLAlchemy's SQLite DateTime stores them, so UtcDateTime reads them back.
    converted = [tuple(_sqlite_value(value) for value in row) for row in rows]
    marks = ", ".join("?" * len(columns))
    raw.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks}){on_conflict}", converted)


def bulk_times(session: AsyncSession) -> Callable[[datetime], Any]:
    """Timestamps for bulk_insert's rows, each distinct one converted once per call: PostgreSQL's
    COPY parses a timestamp's text whichever way it comes, and psycopg formatting datetimes was
    1.8 us of a 2.2 us automation entry row (two per row; a call's rows share a few values).
    SQLite: the datetime itself (bulk_insert stores it as SQLAlchemy's DateTime does)."""
    if session.get_bind().dialect.name != "postgresql":
        return _same
    converted: dict[datetime, str] = {}

    def convert(at: datetime) -> str:
        found = converted.get(at)
        if found is None:
            found = converted[at] = at.isoformat()
        return found

    return convert


def _same(at: datetime) -> datetime:
    return at


def array_text(values: Iterable[int] | Iterable[str]) -> str:
    """A PostgreSQL array literal of integers or strings (never NULL), for a parameter cast to
    its array type (`CAST(:ids AS BIGINT[])`): psycopg dumps a list element by element in
    Python, ~1 us each (2.3 ms of CPU for 2,400 (automation, user) pairs, 0.6 ms this way).
    Strings are quoted, their quotes and backslashes escaped."""
    return "{" + ",".join(_array_element(value) for value in values) + "}"


def _array_element(value: int | str) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(int(value))


def json_text(value: Any) -> str | None:
    """A JSON column's value as bulk_insert takes it, its text (None is SQL NULL), by orjson
    (~5x json.dumps). What the APIs accept it writes: integers within 64 bits, finite floats
    (clarion.formats.stored_value refuses the others)."""
    return None if value is None else orjson.dumps(value).decode()


def _sqlite_value(value: Any) -> Any:
    return sqlite_time(value) if isinstance(value, datetime) else value


def sqlite_time(value: datetime) -> str:
    """An aware datetime as SQLAlchemy's SQLite DateTime stores it (UtcDateTime reads it)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def rowcount(result: Any) -> int:
    """Rows a statement changed (0 where the driver cannot tell: it reports -1)."""
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


# PostgreSQL's answers that say "the same transaction may well succeed if run again": a
# deadlock (two transactions locked rows in different orders; PostgreSQL aborts one of them)
# and a serialization failure.
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def is_retryable(error: BaseException) -> bool:
    """Whether a failed transaction may be run again as it was: a deadlock or serialization
    failure, or a connection that was lost (the pool replaces it)."""
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    return getattr(error.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


def utcnow() -> datetime:
    return datetime.now(UTC)


# The in-loop SQLite driver (clarion.dialects), loaded by name on the first SQLite engine.
registry.register("sqlite.inloop", "clarion.dialects", "InLoopSQLiteDialect")


def sync_url(url: str) -> str:
    """The synchronous driver URL for the same database (Alembic runs synchronously)."""
    return (
        url.replace("+aiosqlite", "").replace("+inloop", "").replace("+psycopg_async", "+psycopg")
    )


class NestedSessionError(RuntimeError):
    """An asyncio task that holds a pooled connection asked the same pool for another."""


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop: a synchronous caller, not ours to check
        return None


class OneConnectionPerTaskPool(AsyncAdaptedQueuePool):
    """The async pool, refusing a second connection to a task that holds one.

    On SQLite (one connection) the second checkout would wait for the first, which its own
    task holds: every API call and worker of the process then waits for pool_timeout (300 s)
    before the task fails. Refused here, before the wait, with the rule's name. Which task
    holds which connection is kept per checkout (a dict operation, ~1 µs against ~50 µs for
    the cheapest statement on SQLite). Tasks a holder starts are other tasks: one that waits
    for a child needing a connection is not caught (decision 0033)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holder: dict[ConnectionPoolEntry, asyncio.Task[Any]] = {}
        self._held: dict[asyncio.Task[Any], int] = {}

    def _do_get(self) -> ConnectionPoolEntry:
        task = _current_task()
        if task is not None and task in self._held:
            raise NestedSessionError(
                f"task {task.get_name()!r} holds a database connection and asked for another: "
                "never open a database session while holding one (docs/conventions.md); pass "
                "the session you hold, or finish it first. On SQLite the second would wait "
                "for the only connection, held by this task, for pool_timeout."
            )
        record = super()._do_get()
        if task is not None:
            self._holder[record] = task
            self._held[task] = self._held.get(task, 0) + 1
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        task = self._holder.pop(record, None)
        if task is not None:
            left = self._held.pop(task) - 1
            if left:
                self._held[task] = left
        super()._do_return_conn(record)


def create_engine(
    url: str, *, pool_size: int = 10, check_nested: bool = False, **kwargs: Any
) -> AsyncEngine:
    """An async engine. On SQLite a task that holds a session and opens another gets a
    NestedSessionError instead of a wait of pool_timeout (OneConnectionPerTaskPool); on
    PostgreSQL too when `check_nested` (a second connection there works, only wastefully)."""
    if url.startswith("sqlite"):
        # Any SQLite URL (sqlite://, sqlite+aiosqlite://) runs on the in-loop driver
        # (clarion.dialects, decision 0006).
        url = make_url(sync_url(url)).set(drivername="sqlite+inloop").render_as_string(False)
        # SQLite has one writer at a time. With several pooled connections, concurrent
        # transactions wait in SQLite's busy handler, which sleeps in steps of up to 100 ms:
        # measured here, a 1,000-recipient batch then took a median 6 s instead of ~0.1 s.
        # One connection makes sessions queue in-process instead, with no sleeping. WAL still
        # lets other processes (the CLI) read meanwhile, and synchronous=NORMAL drops the fsync
        # per commit (~615k rows/s against ~5k with an fsync per commit).
        # Waiting for that connection is the normal state under load, so the pool's timeout is
        # long: at its default 30 s, 32 concurrent API calls starved a worker into a timeout.
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            pool_size=1,
            max_overflow=0,
            pool_timeout=300,
            poolclass=OneConnectionPerTaskPool,
            **kwargs,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # PostgreSQL's JIT compiles large counting queries (audience estimates over millions of
    # installs) for 0.3-0.4 s, a third of the whole query here; Clarion's queries gain nothing.
    own_options = make_url(url).query.get("options", "")
    if isinstance(own_options, tuple):
        own_options = " ".join(own_options)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max(pool_size // 4, 2),
        connect_args={"options": f"{own_options} -c jit=off".strip()},  # keeps the URL's own
        **({"poolclass": OneConnectionPerTaskPool} if check_nested else {}),
        **kwargs,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work outside a request: commit on success, roll back on any error."""
    async with sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
