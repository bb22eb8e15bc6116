"""An automation's statistics at 1,000,000 entries: entries by state and reason, conversions,
and the dashboard's pages of recent entries, timed through the services (no HTTP).

Seeds a fresh PostgreSQL database (or SQLite with --db sqlite), migrated: one iOS app, the
automation measured (created through the Campaigns service, with a conversion event
`ue.purchased` within 48 hours) and --entries entries of it spread over the last 120 days (70 %
sent, 15 % cancelled: two thirds by `ue.purchased`, a third paused, 10 % skipped: audience,
cap:automations or unreachable, 5 % pending), each of its own user; --other entries of a
second automation; tracked events: for a fifth of the sent entries a `ue.purchased` 30 minutes
after the send (a conversion), for another fifth one 49 hours after (too late), for another
fifth one 10 minutes before (too early), and an unrelated `ue.viewed` for every other user.

Checks every figure against what the seeding implies before printing a time: a fast wrong
answer fails.

    .venv/bin/python -m bench.automation_stats
    .venv/bin/python -m bench.automation_stats --db sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select, text

if not __package__:  # run as a file (python bench/automation_stats.py) rather than with -m
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import analyze, create_bench_app, fresh_database, report
from bench.dashboard_pages import Dialect, _kept_database, load_average, timed
from clarion.apps.models import App
from clarion.apps.service import live_access
from clarion.automations.models import ENTRIES
from clarion.campaigns import service as campaigns
from clarion.campaigns.models import Campaign
from clarion.campaigns.schemas import CampaignBody, CampaignStats
from clarion.config import Settings
from clarion.db import transaction
from clarion.migrate import migrate
from clarion.runtime import Runtime
from clarion.stats.automations import (
    STATS_DAYS,
    converted_entries,
    finished_entries,
    recent_entries,
)
from clarion.stats.service import campaign_stats

SPAN = 120 * 86400  # entries spread over the last 120 days
WINDOW_HOURS = 48
PAGE = 26  # the dashboard's page of entries (25 shown, one more says whether a next exists)
STATES = ["sent"] * 14 + ["cancelled"] * 3 + ["skipped"] * 2 + ["pending"]  # by n % 20
REASONS = {14: "ue.purchased", 15: "ue.purchased", 16: "paused", 17: "audience"}


def _reason(n: int) -> str | None:
    if n % 20 == 18:
        return "cap:automations" if n % 40 == 18 else "unreachable"
    return REASONS.get(n % 20)


def _entries_sql(sql: Dialect) -> str:
    """Entry n (the nth newest): entered 2 h before `:now - n * SPAN / :count`, finished
    (sent, cancelled or skipped) an hour later; pending ones due now."""
    at = f"n * {SPAN} / :count"
    return (
        "INSERT INTO automation_entries (app_id, campaign_id, custom_id, install_id, event,"
        " entered_at, due_at, timed, state, reason, finished_at)"
        ' SELECT :app, :campaign, :prefix || n, NULL, \'{"name": "ue.added_to_cart"}\','
        f" {sql.ago(f'{at} + 7200')},"
        f" CASE WHEN n % 20 = 19 THEN {sql.ago('0')} ELSE {sql.ago(f'{at} + 3600')} END,"
        " true,"
        " CASE WHEN n % 20 < 14 THEN 'sent' WHEN n % 20 < 17 THEN 'cancelled'"
        " WHEN n % 20 < 19 THEN 'skipped' ELSE 'pending' END,"
        " CASE n % 20 WHEN 14 THEN 'ue.purchased' WHEN 15 THEN 'ue.purchased'"
        " WHEN 16 THEN 'paused' WHEN 17 THEN 'audience'"
        " WHEN 18 THEN CASE WHEN n % 40 = 18 THEN 'cap:automations' ELSE 'unreachable' END END,"
        f" CASE WHEN n % 20 < 19 THEN {sql.ago(f'{at} + 3600')} END"
        # The newest entry (n = 0) last, as the engine writes them: ids grow with time.
        f" FROM (SELECT :count - 1 - n AS n FROM {sql.series()}) AS newest_last"
    )


def _events_sql(sql: Dialect, *, name: str, offset: str, where: str) -> str:
    """One tracked event of `name` for each entry n matching `where`, `offset` seconds before
    `:now - n * SPAN / :count`."""
    return (
        "INSERT INTO tracked_events (app_id, occurred_at, install_id, custom_id, name)"
        f" SELECT :app, {sql.ago(f'n * {SPAN} / :count + {offset}')}, NULL, 'user-' || n,"
        f" '{name}' FROM {sql.series()} WHERE {where}"
    )


# A fifth of the sent entries convert (30 minutes after the send), a fifth too late (49 hours
# after, only where that is in the past), a fifth too early (10 minutes before the send).
CONVERTS = "n % 20 < 14 AND (n / 20) % 5 = 0"
EVENTS = [
    ("ue.purchased", "1800", CONVERTS),
    (
        "ue.purchased",
        f"3600 - {(WINDOW_HOURS + 1) * 3600}",
        f"n % 20 < 14 AND (n / 20) % 5 = 1 AND n * {SPAN} / :count > {WINDOW_HOURS * 3600}",
    ),
    ("ue.purchased", "4200", "n % 20 < 14 AND (n / 20) % 5 = 2"),
    ("ue.viewed", "1800", "n % 2 = 0"),
]


def expected(count: int, days: int) -> dict[str, Any]:
    """What the statistics must say, from the seeding's own arithmetic."""
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    converted = 0
    for n in range(count):
        state = STATES[n % 20]
        if state != "pending" and n * SPAN // count + 3600 > days * 86400:
            continue  # finished before the days the figures cover
        states[state] += 1
        if state in ("cancelled", "skipped"):
            reasons[f"{state}:{_reason(n)}"] += 1
        converted += state == "sent" and (n // 20) % 5 == 0
    return {"states": states, "reasons": reasons, "converted": converted}


async def seed(runtime: Runtime, args: argparse.Namespace, now: datetime) -> tuple[int, str]:
    sql = Dialect(runtime.engine.dialect.name)
    setup: dict[str, float] = {}
    async with transaction(runtime.sessions) as session:
        app = await create_bench_app(session, runtime.box, "ios")
        access = live_access(app)
        made = []
        for name in ("Abandoned cart", "Welcome"):
            body = campaigns.validate_body(
                {
                    "name": name,
                    "live": True,
                    "trigger": {
                        "event": "ue.added_to_cart",
                        "delay_seconds": 3600,
                        "cancel_events": [{"event": "ue.purchased"}],
                        "conversion": {"event": "ue.purchased", "within_hours": WINDOW_HOURS},
                    },
                    "messages": [{"language": "en", "body": "Still thinking about it?"}],
                }
            )
            made.append(await campaigns.create_campaign(session, access=access, body=body, now=now))
        measured, other = made
        ids = (app.id, measured.id, other.id, measured.token)
    app_id, measured_id, other_id, token = ids
    common = {"app": app_id, "now": sql.now(now)}
    with timed(setup, "entries_s"):
        async with transaction(runtime.sessions) as session:
            for campaign_id, prefix, count in (
                (other_id, "other-", args.other),
                (measured_id, "user-", args.entries),
            ):
                if count:
                    await session.execute(
                        text(_entries_sql(sql)),
                        {**common, "campaign": campaign_id, "prefix": prefix, "count": count},
                    )
    with timed(setup, "tracked_events_s"):
        async with transaction(runtime.sessions) as session:
            for name, offset, where in EVENTS:
                await session.execute(
                    text(_events_sql(sql, name=name, offset=offset, where=where)),
                    {**common, "count": args.entries},
                )
    with timed(setup, "analyze_s"):
        await analyze(runtime)
    return app_id, token


async def measure(
    runtime: Runtime, app_id: int, token: str, args: argparse.Namespace, now: datetime
) -> dict[str, Any]:
    async with runtime.sessions() as session:
        campaign = await session.scalar(select(Campaign.id).where(Campaign.token == token))
        assert campaign is not None
        access = live_access(await session.get_one(App, app_id))

    async def stats(days: int) -> CampaignStats:
        async with runtime.sessions() as session:
            return await campaign_stats(
                session, access=access, token=token, now=now, automation_days=days
            )

    async def finished(days: int) -> None:
        async with runtime.sessions() as session:
            await finished_entries(session, campaign, since=now - timedelta(days=days))

    async def conversions(days: int) -> None:
        async with runtime.sessions() as session:
            stored = await session.get_one(Campaign, campaign)
            trigger = CampaignBody.model_validate(stored.body).trigger
            assert trigger is not None
            assert trigger.conversion is not None
            await converted_entries(
                session, stored, trigger.conversion, since=now - timedelta(days=days)
            )

    async def page(campaign_id: int, before: int | None, first: str) -> None:
        async with runtime.sessions() as session:
            rows = await recent_entries(session, campaign_id=campaign_id, before=before, limit=PAGE)
        assert len(rows) == PAGE, len(rows)
        assert rows[0].custom_id == first, rows[:1]

    async with runtime.sessions() as session:
        middle = await session.scalar(
            select(ENTRIES.c.id).where(
                ENTRIES.c.campaign_id == campaign,
                ENTRIES.c.custom_id == f"user-{args.entries // 2}",
            )
        )
        other = await session.scalar(
            select(Campaign.id).where(Campaign.app_id == app_id, Campaign.id != campaign)
        )
    assert middle is not None
    assert other is not None
    figures: dict[str, Any] = {}
    for days in args.days:
        _check(await stats(days), expected(args.entries, days))
        for label, timed_call in (
            ("statistics", stats),
            ("of_which_finished_entries", finished),
            ("of_which_conversions", conversions),
        ):
            figures[f"{label}_{days}_days_ms"] = await _timed(
                partial(timed_call, days), args.repeat
            )
    for label, call in (
        ("entries_page_1_ms", partial(page, campaign, None, "user-0")),
        # The page after the 500,000th newest entry: the same cost (keyset).
        ("entries_page_deep_ms", partial(page, campaign, middle, f"user-{args.entries // 2 + 1}")),
        # The other automation's newest entries, all older than the measured one's.
        ("other_entries_page_1_ms", partial(page, other, None, "other-0")),
    ):
        figures[label] = await _timed(call, args.repeat)
    return figures


def _check(found: CampaignStats, want: dict[str, Any]) -> None:
    automation = found.automation
    assert automation is not None, "no automation figures"
    states = want["states"]
    got = {
        "pending": automation.pending,
        "sent": automation.sent,
        "cancelled": automation.cancelled,
        "skipped": automation.skipped,
    }
    assert got == {state: states[state] for state in got}, (got, states)
    assert automation.entries == sum(states.values())
    reasons = {f"cancelled:{k}": v for k, v in automation.cancelled_reasons.items()}
    reasons |= {f"skipped:{k}": v for k, v in automation.skipped_reasons.items()}
    assert reasons == dict(want["reasons"]), (reasons, want["reasons"])
    assert automation.converted == want["converted"], (automation.converted, want["converted"])
    assert sum(day.converted or 0 for day in automation.detail) == want["converted"]
    assert sum(day.sent for day in automation.detail) == states["sent"]
    print(
        f"checked: {automation.entries:,} entries ({automation.pending:,} pending),"
        f" {automation.sent:,} sent in {len(automation.detail)} days,"
        f" {automation.converted:,} converted",
        flush=True,
    )


async def _timed(call: Callable[[], Awaitable[Any]], repeat: int) -> dict[str, float]:
    await call()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "min": round(times[0], 1),
        "median": round(statistics.median(times), 1),
        "p95": round(times[max(0, round(0.95 * len(times)) - 1)], 1),
    }


async def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    runtime = Runtime(settings)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    try:
        started = time.monotonic()
        app_id, token = await seed(runtime, args, now)
        seeded_s = round(time.monotonic() - started, 1)
        figures = await measure(runtime, app_id, token, args, now)
        return {"seed_s": seeded_s, **figures}
    finally:
        await runtime.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--other", type=int, default=200_000, help="another automation's")
    parser.add_argument(
        "--days", type=int, nargs="+", default=[STATS_DAYS, 30], help="the periods timed"
    )
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--keep-database", action="store_true", help="PostgreSQL: not dropped")
    args = parser.parse_args()
    with ExitStack() as stack:
        var = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.keep_database and args.db == "postgres":
            url = _kept_database()
            print(f"kept database: {url}", flush=True)
        else:
            url = fresh_database(stack, args.db, var)
        secret = Fernet.generate_key().decode()
        settings = Settings(database_url=url, var_dir=var, secret_key=secret)
        migrate(settings)
        print(f"seeding ({load_average()} load average)", flush=True)
        figures = asyncio.run(run(settings, args))
    print(f"load average (1, 5, 15 min): {load_average()}")
    report(
        f"automation_stats_{args.db}",
        {
            "database": args.db,
            "entries": args.entries,
            "other_entries": args.other,
            "days": args.days,
            "repeat": args.repeat,
            **figures,
        },
    )


if __name__ == "__main__":
    main()
