"""What differs between SQLite and PostgreSQL below the SQL Clarion writes: SQL functions compiled
per dialect (a UTC day, a UTC second in ISO form, seconds between two times, whether a JSON key
holds an object), and the in-loop SQLite driver that clarion.db.create_engine uses for every
SQLite URL."""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Boolean, Float, String, literal, pool
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class utc_day(FunctionElement[str]):
    """The UTC calendar day ("YYYY-MM-DD") of a UtcDateTime column, for per-day statistics."""

    type = String()
    inherit_cache = True


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: Any, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: Any, **kw: Any) -> str:
    # Stored as "YYYY-MM-DD HH:MM:SS.ffffff" in UTC (UtcDateTime, _sqlite_value).
    return f"substr({compiler.process(next(iter(element.clauses)), **kw)}, 1, 10)"


class utc_iso_second(FunctionElement[str]):
    """A UtcDateTime column as "YYYY-MM-DDTHH:MM:SSZ" (UTC, to the second), for exports."""

    type = String()
    inherit_cache = True


@compiles(utc_iso_second, "postgresql")
def _utc_iso_second_postgresql(element: utc_iso_second, compiler: Any, **kw: Any) -> str:
    column = compiler.process(next(iter(element.clauses)), **kw)
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


@compiles(utc_iso_second, "sqlite")
def _utc_iso_second_sqlite(element: utc_iso_second, compiler: Any, **kw: Any) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', {compiler.process(next(iter(element.clauses)), **kw)})"


class elapsed_seconds(FunctionElement[float]):
    """`elapsed_seconds(start, end)`: seconds from one UtcDateTime column to another.

    Date arithmetic between columns is what the dialects spell differently: SQLite stores
    datetimes as text and needs julianday()."""

    type = Float()
    inherit_cache = True


@compiles(elapsed_seconds, "postgresql")
def _elapsed_seconds_postgresql(element: elapsed_seconds, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@compiles(elapsed_seconds, "sqlite")
def _elapsed_seconds_sqlite(element: elapsed_seconds, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


class json_object_at(FunctionElement[bool]):
    """`json_object_at(column, "key")`: whether a JSON column holds an object under a top-level
    key (absent or JSON null: false)."""

    type = Boolean()
    inherit_cache = True

    def __init__(self, column: Any, key: str) -> None:
        super().__init__(column, literal(key, String()))


@compiles(json_object_at, "postgresql")
def _json_object_at_postgresql(element: json_object_at, compiler: Any, **kw: Any) -> str:
    column, key = (compiler.process(clause, **kw) for clause in element.clauses)
    # IS NOT DISTINCT FROM: false, not NULL, where the key is absent (NOT of it holds).
    return f"(json_typeof({column} -> {key}) IS NOT DISTINCT FROM 'object')"


@compiles(json_object_at, "sqlite")
def _json_object_at_sqlite(element: json_object_at, compiler: Any, **kw: Any) -> str:
    column, key = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(json_type({column}, '$.' || {key}) IS 'object')"


class InLoopSQLiteDialect(SQLiteDialect_pysqlite):
    """The standard library's sqlite3, called directly on the event loop.

    aiosqlite runs every statement on a helper thread; on this machine kind the hop costs
    ~260 µs a statement, against ~3-30 µs for the statement itself on a local WAL database,
    and it made the embedded API ~10x slower than its figure. A SQLite call never waits on the
    network, so blocking the loop for it is cheaper than the hop. The cost: a statement that
    waits on another process's write lock (busy_timeout) blocks the loop meanwhile; in the
    embedded mode the only other writers are short CLI commands.
    SQLAlchemy's async layer runs the sync driver inside its greenlet, as it would a real
    async driver; `is_async` is what lets `create_async_engine` accept it.
    """

    driver = "inloop"
    is_async = True
    supports_statement_cache = True
    supports_server_side_cursors = False

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.AsyncAdaptedQueuePool

    def create_connect_args(self, url: URL) -> Any:
        args, kwargs = super().create_connect_args(url)
        return args, {**kwargs, "factory": _InLoopConnection}


class _InLoopCursor(sqlite3.Cursor):
    # SQLAlchemy's async results call this on the driver's cursor once they are buffered; a
    # sqlite3 cursor has nothing to release.
    async def _async_soft_close(self) -> None:
        return None


class _InLoopConnection(sqlite3.Connection):
    def cursor(self, factory: Any = _InLoopCursor) -> Any:
        return super().cursor(factory)
