"""Applying Alembic migrations from code (`clarion migrate`, and `clarion serve` on SQLite)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from clarion.config import Settings
from clarion.db import sync_url
from clarion.queue import install_pg_schema


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", sync_url(database_url))
    # Date-named revisions sort by age in a directory listing.
    config.set_main_option(
        "file_template", "%%(year)d-%%(month).2d-%%(day).2d-%%(hour).2d%%(minute).2d_%%(slug)s"
    )
    return config


def migrate(settings: Settings) -> None:
    url = settings.resolved_database_url
    if settings.is_sqlite:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
    if not settings.is_sqlite:
        asyncio.run(install_pg_schema(url))


@functools.cache
def _scripts() -> tuple[frozenset[str], frozenset[str]]:
    """This code's migration heads, and every revision it knows (the scripts do not change
    while the process runs)."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    known = frozenset(script.revision for script in scripts.walk_revisions())
    return frozenset(scripts.get_heads()), known


def schema_state(connection: Connection) -> str:
    """The schema check: "ok" when the database has every migration this code needs, else
    "behind" or "not migrated". A revision this code does not know comes from newer code that
    migrated first, as a rolling deploy does (decision 0042: migrations only add while old
    code still runs): this code still works on it, so that is "ok" too."""
    current = frozenset(MigrationContext.configure(connection).get_current_heads())
    heads, known = _scripts()
    if not current:
        return "not migrated"
    if current == heads or current - known:
        return "ok"
    return "behind"
