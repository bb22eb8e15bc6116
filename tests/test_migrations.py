"""Migrations that move data, run on both databases against a database at the revision before;
and the models, compared with the database the migrations build."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text

import clarion.models  # noqa: F401  (registers every table on Base.metadata)
from clarion.config import Settings
from clarion.db import Base, sync_url
from clarion.migrate import alembic_config, migrate
from tests.conftest import empty_database

BEFORE_EVENT_COUNTS = "c06fd06558ea"


# The event log's day partitions on PostgreSQL (clarion.retention.partitions): tables of their
# own in the catalogue, the models describe their parent.
_PARTITION = re.compile(r"^(push|inapp)_events_(p|past_|future_)[0-9]{8}$")


def _not_the_job_queue(name: str | None, type_: str, parent_names: object) -> bool:
    # pgqueuer's own tables (pgqueuer, pgqueuer_log, pgqueuer_statistics, pgqueuer_schedules:
    # its default names, Clarion sets no prefix), installed by `clarion migrate` on PostgreSQL.
    if type_ != "table" or name is None:
        return True
    return not (name.startswith("pgqueuer") or _PARTITION.match(name))


def test_the_models_are_what_the_migrations_build(backend: str, tmp_path: Path) -> None:
    """A model changed without its migration (or the reverse) fails here, on the backend where
    they differ: the code runs on what the models say, production on what the migrations made."""
    with empty_database(backend, tmp_path) as url:
        migrate(Settings(database_url=url, var_dir=tmp_path))
        engine = create_engine(sync_url(url))
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection,
                    opts={"compare_type": True, "include_name": _not_the_job_queue},
                )
                differences = compare_metadata(context, Base.metadata)
        finally:
            engine.dispose()
    assert differences == []


@pytest.fixture(params=["sqlite", "postgres"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with empty_database(str(request.param), tmp_path) as url:
        yield url


def test_push_event_counts_are_filled_from_the_existing_log(new_database: str) -> None:
    config = alembic_config(new_database)
    command.upgrade(config, BEFORE_EVENT_COUNTS)
    engine = create_engine(sync_url(new_database))
    events = [
        # (kind, occurred_at, send_token, group_id, campaign_token)
        ("push_sent", "2026-03-10 10:00:00+00:00", "s-a", None, "camp"),
        ("push_sent", "2026-03-10 23:59:59+00:00", "s-a", None, "camp"),
        ("push_sent", "2026-03-11 00:00:00+00:00", "s-b", None, "camp"),
        ("push_opened", "2026-03-11 08:00:00+00:00", "s-a", None, "camp"),
        ("token_deleted", "2026-03-10 10:00:01+00:00", None, None, "camp"),
        ("push_optin", "2026-03-10 10:00:00+00:00", None, None, "camp"),  # not a counted kind
        ("push_sent", "2026-03-10 10:00:00+00:00", "tx-1", "welcome", None),
        ("push_sent", "2026-03-10 11:00:00+00:00", "tx-2", "welcome", None),
        ("push_sent", "2026-03-10 11:00:00+00:00", "tx-3", None, None),  # no group, no campaign
    ]
    with engine.begin() as connection:
        for kind, occurred_at, send_token, group_id, campaign_token in events:
            at = occurred_at
            if engine.dialect.name == "sqlite":  # as UtcDateTime stores it there
                at = occurred_at.removesuffix("+00:00") + ".000000"
            connection.execute(
                text(
                    "INSERT INTO push_events (app_id, kind, occurred_at, platform, send_token,"
                    " group_id, campaign_token) VALUES (1, :kind, :at, 'ios', :send, :group,"
                    " :campaign)"
                ),
                {
                    "kind": kind,
                    "at": at,
                    "send": send_token,
                    "group": group_id,
                    "campaign": campaign_token,
                },
            )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT app_id, day, campaign_token, group_id, send_token, kind, count, folded"
                " FROM push_event_counts"
            )
        )
        counted = sorted(tuple(row) for row in rows)
    command.downgrade(config, BEFORE_EVENT_COUNTS)  # and back
    with engine.connect() as connection:
        assert not inspect(connection).has_table("push_event_counts")
    engine.dispose()
    assert counted == [
        (1, "2026-03-10", "", "welcome", "", "push_sent", 2, True),
        (1, "2026-03-10", "camp", "", "", "token_deleted", 1, True),
        (1, "2026-03-10", "camp", "", "s-a", "push_sent", 2, True),
        (1, "2026-03-11", "camp", "", "s-a", "push_opened", 1, True),
        (1, "2026-03-11", "camp", "", "s-b", "push_sent", 1, True),
    ]


def _company_and_app(connection: Connection, at: str) -> None:
    """Company 1 and its app 1."""
    connection.execute(
        text(
            "INSERT INTO companies (id, name, rest_key_hash, created_at) VALUES (1, 'c', 'h', :at)"
        ),
        {"at": at},
    )
    connection.execute(
        text(
            "INSERT INTO apps (id, company_id, name, platform, live_key_hash, dev_key_hash,"
            " default_timezone, created_at) VALUES (1, 1, 'a', 'ios', 'l', 'd', 'UTC', :at)"
        ),
        {"at": at},
    )


BEFORE_BATCH_COUNTERS = "5b0e7c2a9d41"


def test_send_counters_move_to_batches_and_back(new_database: str) -> None:
    config = alembic_config(new_database)
    command.upgrade(config, BEFORE_BATCH_COUNTERS)
    engine = create_engine(sync_url(new_database))
    at = "2026-03-10 10:00:00+00:00"
    with engine.begin() as connection:
        _company_and_app(connection, at)
        # Send 1: two batches, counted 1,500 targeted so far; send 2: one batch, nothing yet.
        for send_id, counters in ((1, (1500, 1400, 60, 40)), (2, (0, 0, 0, 0))):
            connection.execute(
                text(
                    "INSERT INTO sends (id, token, app_id, kind, dev_only, sandbox, content,"
                    " created_at, targeted, sent, failed, tokens_deleted) VALUES (:id, :token, 1,"
                    " 'transactional', false, false, '{}', :at, :t, :s, :f, :d)"
                ),
                dict(
                    zip(("t", "s", "f", "d"), counters, strict=True),
                    id=send_id,
                    token=f"s{send_id}",
                    at=at,
                ),
            )
        for batch_id, send_id in ((10, 1), (11, 1), (12, 2)):
            connection.execute(
                text(
                    "INSERT INTO delivery_batches (id, send_id, status, attempt, not_before,"
                    " last_enqueued_at, recipients, created_at) VALUES (:id, :send, 'done', 0,"
                    " :at, :at, '{}', :at)"
                ),
                {"id": batch_id, "send": send_id, "at": at},
            )
    sums = (
        "SELECT send_id, sum(targeted), sum(sent), sum(failed), sum(tokens_deleted)"
        " FROM delivery_batches GROUP BY send_id ORDER BY send_id"
    )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        upgraded = [tuple(row) for row in connection.execute(text(sums))]
        assert "targeted" not in {c["name"] for c in inspect(connection).get_columns("sends")}
    command.downgrade(config, BEFORE_BATCH_COUNTERS)
    with engine.connect() as connection:
        restored = [
            tuple(row)
            for row in connection.execute(
                text("SELECT id, targeted, sent, failed, tokens_deleted FROM sends ORDER BY id")
            )
        ]
    engine.dispose()
    assert upgraded == [(1, 1500, 1400, 60, 40), (2, 0, 0, 0, 0)]
    assert restored == [(1, 1500, 1400, 60, 40), (2, 0, 0, 0, 0)]


BEFORE_AUDIENCE_BITMAPS = "3f9a6b1c7d25"


def _word(*positions: int) -> int:
    """The signed 64-bit word with these bits set, as the databases store it."""
    value = sum(1 << position for position in positions)
    return value - (1 << 64) if value >= 1 << 63 else value


def test_audiences_are_resolved_to_bitmaps_of_their_current_members(new_database: str) -> None:
    config = alembic_config(new_database)
    command.upgrade(config, BEFORE_AUDIENCE_BITMAPS)
    engine = create_engine(sync_url(new_database))
    at = "2026-03-10 10:00:00+00:00"
    with engine.begin() as connection:
        _company_and_app(connection, at)
        # Installation id: (custom id, advertising id); the install id is "i<id>".
        installs = {1: ("u1", None), 63: ("u63", "ad-63"), 64: ("u64", None), 130: (None, "ad-130")}
        for pk, (custom_id, advertising_id) in installs.items():
            connection.execute(
                text(
                    "INSERT INTO installations (id, app_id, install_id, is_dev, custom_id,"
                    " advertising_id, push_optin, created_at, last_seen_at)"
                    " VALUES (:id, 1, :install, false, :custom, :ad, true, :at, :at)"
                ),
                {
                    "id": pk,
                    "install": f"i{pk}",
                    "custom": custom_id,
                    "ad": advertising_id,
                    "at": at,
                },
            )
        audiences = {
            # id: (kind, current generation, members by generation)
            1: ("custom_ids", 1, {0: ["u64"], 1: ["u1", "u63", "nobody"]}),
            2: ("advertising_ids", 0, {0: ["ad-63", "ad-130"]}),
            3: ("install_ids", 0, {0: ["i64"]}),
        }
        for audience_id, (kind, generation, members) in audiences.items():
            connection.execute(
                text(
                    "INSERT INTO audiences (id, app_id, name, kind, generation, nb_ids,"
                    " created_at, updated_at) VALUES (:id, 1, :name, :kind, :gen, 0, :at, :at)"
                ),
                {
                    "id": audience_id,
                    "name": f"a{audience_id}",
                    "kind": kind,
                    "gen": generation,
                    "at": at,
                },
            )
            for member_generation, ids in members.items():
                for member_id in ids:
                    connection.execute(
                        text(
                            "INSERT INTO audience_members (audience_id, generation, member_id)"
                            " VALUES (:a, :g, :m)"
                        ),
                        {"a": audience_id, "g": member_generation, "m": member_id},
                    )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        bitmaps = sorted(
            tuple(row)
            for row in connection.execute(
                text("SELECT audience_id, generation, block, bits FROM audience_bitmaps")
            )
        )
    command.downgrade(config, BEFORE_AUDIENCE_BITMAPS)
    with engine.connect() as connection:
        assert not inspect(connection).has_table("audience_bitmaps")
    engine.dispose()
    assert bitmaps == [
        (1, 1, 0, _word(1, 63)),  # generation 0 (u64) is not the current one
        (2, 0, 0, _word(63)),
        (2, 0, 2, _word(2)),  # installation 130 = 2 * 64 + 2
        (3, 0, 1, _word(0)),
    ]


def test_sign_in_failures_gain_the_client_address_and_lose_it_again(new_database: str) -> None:
    config = alembic_config(new_database)
    command.upgrade(config, "head")
    engine = create_engine(sync_url(new_database))

    def shape() -> tuple[list[str], list[str]]:
        with engine.connect() as connection:
            found = inspect(connection)
            columns = [c["name"] for c in found.get_columns("dashboard_sign_in_failures")]
            indexes = [str(i["name"]) for i in found.get_indexes("dashboard_sign_in_failures")]
        return columns, sorted(indexes)

    assert shape() == (
        ["id", "email", "client", "failed_at"],
        ["ix_dashboard_sign_in_failures_at", "ix_dashboard_sign_in_failures_client_at"],
    )
    command.downgrade(config, "6b2e0c4d9a17")
    assert shape() == (
        ["id", "email", "failed_at"],
        ["ix_dashboard_sign_in_failures_at", "ix_dashboard_sign_in_failures_email_at"],
    )
    engine.dispose()


BEFORE_EVENT_PARTITIONS = "3f6a9d2c7b41"


def test_the_event_log_is_partitioned_by_day_with_its_rows_and_back(new_database: str) -> None:
    """PostgreSQL: push and in-app events become parents partitioned by day, their rows in the
    partition of their day from the oldest row's, ids and the id sequence kept; the downgrade
    gives the plain tables back with every row. Tracked events, and SQLite's tables, stay as
    they are."""
    config = alembic_config(new_database)
    command.upgrade(config, BEFORE_EVENT_PARTITIONS)
    engine = create_engine(sync_url(new_database))
    postgres = engine.dialect.name == "postgresql"
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    times = [today - timedelta(days=days) for days in (0, 3, 10)]

    def stored(at: datetime) -> str:  # as UtcDateTime stores it on each database
        return at.isoformat() if postgres else at.strftime("%Y-%m-%d %H:%M:%S.%f")

    with engine.begin() as connection:
        for at in times:
            connection.execute(
                text(
                    "INSERT INTO push_events (app_id, kind, occurred_at, platform)"
                    " VALUES (1, 'push_sent', :at, 'ios')"
                ),
                {"at": stored(at)},
            )
            connection.execute(
                text(
                    "INSERT INTO inapp_events (app_id, kind, occurred_at, platform, campaign_id)"
                    " VALUES (1, 'inapp_shown', :at, 'ios', 'c')"
                ),
                {"at": stored(at)},
            )
            connection.execute(
                text("INSERT INTO tracked_events (app_id, occurred_at, name) VALUES (1, :at, 'e')"),
                {"at": stored(at)},
            )
    tables = ("push_events", "inapp_events", "tracked_events")
    where = "SELECT %s, id FROM {} ORDER BY id" % ("tableoid::regclass::text" if postgres else "''")
    command.upgrade(config, "head")
    with engine.begin() as connection:
        placed = {t: [tuple(r) for r in connection.execute(text(where.format(t)))] for t in tables}
        # New rows take the next ids of the same sequence.
        connection.execute(
            text(
                "INSERT INTO push_events (app_id, kind, occurred_at, platform)"
                " VALUES (1, 'push_opened', :at, 'ios')"
            ),
            {"at": stored(today)},
        )
    command.downgrade(config, BEFORE_EVENT_PARTITIONS)
    with engine.connect() as connection:
        back = [tuple(r) for r in connection.execute(text("SELECT id, kind FROM push_events"))]
        names = inspect(connection).get_table_names()
    engine.dispose()
    day, three, ten = (f"{at:%Y%m%d}" for at in times)
    for table in tables:
        expected = (
            [(f"{table}_p{day}", 1), (f"{table}_p{three}", 2), (f"{table}_p{ten}", 3)]
            if postgres and table != "tracked_events"
            else [(table if postgres else "", n) for n in (1, 2, 3)]
        )
        assert placed[table] == expected
    assert sorted(back) == [
        (1, "push_sent"),
        (2, "push_sent"),
        (3, "push_sent"),
        (4, "push_opened"),
    ]
    assert not [name for name in names if _PARTITION.match(name)]
