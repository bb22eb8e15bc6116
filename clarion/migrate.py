"""Applying Alembic migrations from code (`clarion migrate`, and `clarion serve` on SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

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
