"""Migrations that move data, run on both databases against a database at the revision before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from clarion.db import sync_url
from clarion.migrate import alembic_config
from tests.conftest import empty_database

BEFORE_EVENT_COUNTS = "c06fd06558ea"


@pytest.fixture(params=["sqlite", "postgres"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with empty_database(str(request.param), tmp_path) as url:
        yield url


def test_campaign_event_counts_are_filled_from_the_existing_log(new_database: str) -> None:
    config = alembic_config(new_database)
    command.upgrade(config, BEFORE_EVENT_COUNTS)
    engine = create_engine(sync_url(new_database))
    events = [
        # (kind, occurred_at, send_token, campaign_token)
        ("push_sent", "2026-03-10 10:00:00+00:00", "s-a", "camp"),
        ("push_sent", "2026-03-10 23:59:59+00:00", "s-a", "camp"),
        ("push_sent", "2026-03-11 00:00:00+00:00", "s-b", "camp"),
        ("push_opened", "2026-03-11 08:00:00+00:00", "s-a", "camp"),
        ("token_deleted", "2026-03-10 10:00:01+00:00", None, "camp"),
        ("push_optin", "2026-03-10 10:00:00+00:00", None, "camp"),  # not a counted kind
        ("push_sent", "2026-03-10 10:00:00+00:00", "tx", None),  # transactional
    ]
    with engine.begin() as connection:
        for kind, occurred_at, send_token, campaign_token in events:
            at = occurred_at
            if engine.dialect.name == "sqlite":  # as UtcDateTime stores it there
                at = occurred_at.removesuffix("+00:00") + ".000000"
            connection.execute(
                text(
                    "INSERT INTO push_events (app_id, kind, occurred_at, platform, send_token,"
                    " campaign_token) VALUES (1, :kind, :at, 'ios', :send, :campaign)"
                ),
                {"kind": kind, "at": at, "send": send_token, "campaign": campaign_token},
            )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT campaign_token, day, send_token, kind, count, folded"
                " FROM campaign_event_counts"
            )
        )
        counted = sorted(tuple(row) for row in rows)
    engine.dispose()
    assert counted == [
        ("camp", "2026-03-10", "", "token_deleted", 1, True),
        ("camp", "2026-03-10", "s-a", "push_sent", 2, True),
        ("camp", "2026-03-11", "s-a", "push_opened", 1, True),
        ("camp", "2026-03-11", "s-b", "push_sent", 1, True),
    ]
