"""Dropping an expired day of push events while a writer goes on (docs/retention.md).

PostgreSQL: fills yesterday's day partition of a freshly migrated database with N push events
and today's with KEPT_ROWS (in SQL, in chunks), checkpoints (an expired day was written and
checkpointed long before it expires), optionally evicts the day's files from the OS page cache
(`--cache cold`: a day 400 days old is read by nothing, decision 0041), starts a writer thread
that inserts push events into today's partition in short transactions (10 rows each, as a
delivery job's outcomes are, on its own connection), then times one retention pass of
push_events (clarion.retention.partitions.keep_partitions, the task's own call, from its
connection to its return) that drops yesterday, and records every insert's latency meanwhile.
Checks before printing: yesterday had N rows and has none after, its partition and files are
gone, today holds its KEPT_ROWS and exactly the rows the writer committed, and the writer
committed inserts during the drop. Also reports the day's size by relation and, on the same
file system, what an unlink of a 1 GiB file costs with its pages cached and not.
Target (issue 24): 10,000,000 events dropped in <= 1 s, no writer blocked.

SQLite (`--backend sqlite`): the same with clarion.retention.service.delete_before (bounded
DELETEs), the writer a coroutine on the same loop and connection, as in `clarion serve`.

    .venv/bin/python -m bench.event_retention --events 10000000
    .venv/bin/python -m bench.event_retention --events 10000000 --cache cold
    .venv/bin/python -m bench.event_retention --backend sqlite --events 200000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from sqlalchemy import func, select

from bench.common import fresh_database, report
from clarion.config import Settings
from clarion.db import create_engine, create_sessionmaker, sync_url, transaction
from clarion.events.models import PushEvent, PushEventKind
from clarion.events.service import push_event_row, record_push_events
from clarion.migrate import alembic_config, migrate
from clarion.retention.partitions import Upkeep, day_name, keep_partitions, layout
from clarion.retention.service import EVENT_LOGS, delete_before

CHUNK = 1_000_000
# Rows of today loaded before the drop, which must all be there after it.
KEPT_ROWS = 100_000
WRITER_ROWS = 10  # per transaction


def _fill_sql(day: date, start: int, count: int) -> str:
    """`count` push events spread over `day`, of 5 apps, a third of them a campaign's."""
    return f"""
        INSERT INTO push_events (app_id, kind, occurred_at, platform, install_id, push_token,
            send_token, campaign_token, resent)
        SELECT 1 + g % 5, 'push_sent',
            TIMESTAMPTZ '{day.isoformat()} 00:00:00+00' + (g % 86400000) * INTERVAL '1 ms',
            'ios', 'install-' || g, md5(g::text), 'send-' || g % 1000,
            CASE WHEN g % 3 = 0 THEN 'camp-' || g % 50 END, false
        FROM generate_series({start}, {start + count - 1}) g"""


@dataclass
class Writer:
    """Inserts WRITER_ROWS push events per transaction until stopped; each one's latency."""

    url: str
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    committed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        now = datetime.now(UTC)
        with psycopg.connect(self.url) as connection:
            while not self.stop.is_set():
                started = time.perf_counter()
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO push_events (app_id, kind, occurred_at, platform)"
                        " VALUES (1, 'push_sent', %s, 'ios')",
                        [(now,)] * WRITER_ROWS,
                    )
                self.latencies.append((started, time.perf_counter() - started))
                self.committed += WRITER_ROWS


def _during(latencies: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """Latencies of the inserts that were running at some point between start and end."""
    return [took for began, took in latencies if began <= end and began + took >= start]


def _summary(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "inserts": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def _relations(connection: psycopg.Connection[Any], table: str) -> dict[str, tuple[int, str]]:
    """The table's relations (itself, its indexes, its TOAST table and index): name ->
    (bytes, file path relative to the data directory)."""
    rows = connection.execute(
        """
        WITH t AS (SELECT oid, reltoastrelid FROM pg_class WHERE oid = %(table)s::regclass)
        SELECT c.relname, pg_relation_size(c.oid), pg_relation_filepath(c.oid) FROM pg_class c
        WHERE c.oid IN (SELECT oid FROM t UNION SELECT reltoastrelid FROM t)
           OR c.oid IN (SELECT indexrelid FROM pg_index
                        WHERE indrelid IN (SELECT oid FROM t UNION SELECT reltoastrelid FROM t))
        ORDER BY 2 DESC
        """,
        {"table": table},
    ).fetchall()
    return {name: (size, path) for name, size, path in rows}


def _files(data_directory: Path, relations: dict[str, tuple[int, str]]) -> list[Path]:
    """Every file of these relations: segments (path, path.1, ...) and forks (_fsm, _vm)."""
    found: list[Path] = []
    for _size, relative in relations.values():
        path = data_directory / relative
        found += [path, *path.parent.glob(f"{path.name}.*"), *path.parent.glob(f"{path.name}_*")]
    return [file for file in found if file.exists()]


def _resident_bytes(files: list[Path]) -> int:
    """Bytes of these files in the OS page cache (util-linux's fincore)."""
    if not files:
        return 0
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sum(int(line) for line in out.split())


def _evict(files: list[Path]) -> None:
    """Drop the files' clean pages from the OS page cache (the checkpoint wrote them)."""
    for file in files:
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def _unlink_gib(directory: Path, *, cached: bool) -> float:
    """Seconds to unlink a 1 GiB file written and fsynced in `directory`, its pages in the
    page cache or evicted first."""
    path = directory / "unlink-probe"
    chunk = os.urandom(8 << 20)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(128):
            os.write(descriptor, chunk)
        os.fsync(descriptor)
        if not cached:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
    started = time.perf_counter()
    path.unlink()
    return time.perf_counter() - started


def run_postgres(events: int, cache: str, revision: str) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    day = today - timedelta(days=1)  # the migration made its partition
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        url = fresh_database(stack, "postgres", Path(tmp))
        command.upgrade(alembic_config(url), revision)
        raw = sync_url(url).replace("postgresql+psycopg", "postgresql")
        partition = day_name("push_events", day)
        loaded = time.perf_counter()
        with psycopg.connect(raw, autocommit=True) as connection:
            connection.execute("SET synchronous_commit = off")
            for start in range(1, events + 1, CHUNK):
                connection.execute(_fill_sql(day, start, min(CHUNK, events + 1 - start)))
                print(f"  {min(start + CHUNK - 1, events):,} rows", flush=True)
            connection.execute(_fill_sql(today, events + 1, KEPT_ROWS))
            connection.execute("ANALYZE push_events")
            load_seconds = time.perf_counter() - loaded
            relations = _relations(connection, partition)
            shown = connection.execute("SHOW data_directory").fetchone()
            assert shown is not None
            data_directory = Path(str(shown[0]))
            files = _files(data_directory, relations)
            assert files, f"the files of {partition} are not readable here: run as root/postgres"
            checkpointed = time.perf_counter()
            connection.execute("CHECKPOINT")
            checkpoint_seconds = time.perf_counter() - checkpointed
            if cache == "cold":
                _evict(files)
            resident = _resident_bytes(files)
        writer = Writer(raw)
        thread = threading.Thread(target=writer.run)

        async def drop() -> tuple[float, float, Upkeep, list[date]]:
            engine = create_engine(url, pool_size=1)
            try:
                started = time.perf_counter()
                done = await keep_partitions(
                    engine, {"push_events": (today, today + timedelta(days=7))}
                )
                ended = time.perf_counter()
                async with engine.connect() as connection:
                    left = await layout(connection, "push_events")
            finally:
                await engine.dispose()
            assert done is not None, "the advisory lock was held"
            assert done["push_events"].dropped == [day], done
            return started, ended, done["push_events"], left.days

        thread.start()
        while len(writer.latencies) < 200:  # warm: the writer's steady latency first
            time.sleep(0.01)
        started, ended, upkeep, days = asyncio.run(drop())
        time.sleep(0.5)  # the writer's pace after the drop, for the record
        writer.stop.set()
        thread.join()
        with psycopg.connect(raw) as connection:
            per_day: dict[date, int] = dict(
                connection.execute(
                    "SELECT (occurred_at AT TIME ZONE 'UTC')::date, count(*) FROM push_events"
                    " GROUP BY 1"
                ).fetchall()
            )
            still_there = connection.execute(
                "SELECT count(*) FROM pg_class WHERE relname = %s", (partition,)
            ).fetchone()
        probe = Path(tmp)
        same_disk = probe.stat().st_dev == data_directory.stat().st_dev
        unlink = (
            {
                "cached_s": round(_unlink_gib(probe, cached=True), 3),
                "not_cached_s": round(_unlink_gib(probe, cached=False), 3),
            }
            if same_disk
            else "not measured: the temporary directory is on another file system"
        )
    during = _during(writer.latencies, started, ended)
    before = [took for began, took in writer.latencies if began + took < started]
    # The run checks itself before any figure is printed.
    assert day not in days, days
    assert days[0] == today, days
    assert per_day.get(day, 0) == 0, per_day
    assert per_day == {today: KEPT_ROWS + writer.committed}, (per_day, writer.committed)
    assert still_there == (0,), f"{partition} is still in the catalogue"
    assert not [file for file in files if file.exists() and file.stat().st_size], files
    assert during, "the writer inserted nothing while the day was dropped"
    total = sum(size for size, _path in relations.values())
    return {
        "events_dropped": events,
        "revision": revision,
        "partition_mb": round(total / 1e6),
        "bytes_per_event": round(total / events, 1),
        "relations_mb": {name: round(size / 1e6, 1) for name, (size, _p) in relations.items()},
        "cache": cache,
        "resident_in_page_cache_mb": round(resident / 1e6),
        "load_seconds": round(load_seconds, 1),
        "checkpoint_seconds": round(checkpoint_seconds, 1),
        "drop_seconds": round(ended - started, 3),
        # Of which: the day out of the table (DETACH CONCURRENTLY, ATTACH of the new `past`),
        # then its files freed (DROP TABLE of the detached partition, which no query reaches).
        "detach_seconds": round(upkeep.detaching, 3),
        "drop_table_seconds": round(upkeep.dropping, 3),
        "writer_before_drop": _summary(before),
        "writer_during_drop": _summary(during),
        "writer_rows_committed": writer.committed,
        "unlink_1gib_same_file_system": unlink,
    }


def run_sqlite(events: int) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    day = today - timedelta(days=1)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        url = fresh_database(stack, "sqlite", Path(tmp))
        migrate(Settings(database_url=url, var_dir=Path(tmp)))

        async def scenario() -> dict[str, Any]:
            engine = create_engine(url)
            sessions = create_sessionmaker(engine)
            start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
            for first in range(0, events, 100_000):
                async with transaction(sessions) as session:
                    await record_push_events(
                        session,
                        [
                            push_event_row(
                                app_id=1 + n % 5,
                                kind=PushEventKind.SENT,
                                occurred_at=start + timedelta(milliseconds=n),
                                platform="ios",
                                install_id=f"install-{n}",
                                send_token=f"send-{n % 1000}",
                            )
                            for n in range(first, min(first + 100_000, events))
                        ],
                    )
            async with transaction(sessions) as session:
                await _apps(session)
            latencies: list[tuple[float, float]] = []
            committed = 0
            stopping = asyncio.Event()
            now = datetime.now(UTC)

            async def write() -> None:
                nonlocal committed
                while not stopping.is_set():
                    began = time.perf_counter()
                    async with transaction(sessions) as session:
                        await record_push_events(
                            session,
                            [
                                push_event_row(
                                    app_id=1,
                                    kind=PushEventKind.SENT,
                                    occurred_at=now,
                                    platform="ios",
                                )
                            ]
                            * WRITER_ROWS,
                        )
                    latencies.append((began, time.perf_counter() - began))
                    committed += WRITER_ROWS
                    await asyncio.sleep(0)

            writer = asyncio.create_task(write())
            while len(latencies) < 200:
                await asyncio.sleep(0.01)
            push = next(log for log in EVENT_LOGS if log.table == "push_events")
            started = time.perf_counter()
            deleted = await delete_before(sessions, push, today)
            ended = time.perf_counter()
            stopping.set()
            await writer
            async with sessions() as session:
                left = await session.scalar(
                    select(func.count()).where(
                        PushEvent.occurred_at
                        < datetime.combine(today, datetime.min.time(), tzinfo=UTC)
                    )
                )
                total = await session.scalar(select(func.count()).select_from(PushEvent))
            await engine.dispose()
            assert deleted == events, deleted
            assert left == 0, left
            assert total == committed, (total, committed)
            during = _during(latencies, started, ended)
            assert during, "the writer inserted nothing during the deletes"
            before = [took for began, took in latencies if began + took < started]
            return {
                "events_deleted": events,
                "delete_seconds": round(ended - started, 3),
                "writer_before_delete": _summary(before),
                "writer_during_delete": _summary(during),
                "writer_rows_committed": committed,
            }

        return asyncio.run(scenario())


async def _apps(session: Any) -> None:
    """Apps 1 to 5, whose ids delete_before walks (the rows above name them)."""
    from sqlalchemy import insert

    from clarion.apps.models import App, Company

    await session.execute(insert(Company).values(id=1, name="c", rest_key_hash="r"))
    await session.execute(
        insert(App),
        [
            {
                "id": n,
                "company_id": 1,
                "name": f"a{n}",
                "platform": "ios",
                "live_key_hash": f"l{n}",
                "dev_key_hash": f"d{n}",
            }
            for n in range(1, 6)
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument(
        "--cache",
        choices=("hot", "cold"),
        default="hot",
        help="PostgreSQL: the day's pages left in the OS page cache after loading (hot), or "
        "evicted as a day written 400 days ago would be (cold)",
    )
    parser.add_argument(
        "--revision",
        default="head",
        help="PostgreSQL: migrate to this revision (3f9d2c6b8a41: the indexes before 0046)",
    )
    args = parser.parse_args()
    if args.backend == "postgres":
        figures = run_postgres(args.events, args.cache, args.revision)
        report(f"event_retention_{args.cache}", figures)
    else:
        report("event_retention_sqlite", run_sqlite(args.events))


if __name__ == "__main__":
    main()
