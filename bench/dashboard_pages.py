"""Dashboard pages on a large database: median and p95 response times through `clarion serve`.

Seeds a fresh PostgreSQL database (or SQLite with --db sqlite), migrated: one company with an
iOS app; 1,000,000 installations (70% with a custom id, 90% with a push token, 80% opted in,
five languages); 1,000 campaigns through the Campaigns service (a third scheduled, the rest
drafts, a quarter targeted); 2,000,000 push events over the last 30 days (80% push_sent, 15%
push_opened of an install sent to, 5% push_error), a quarter of them from one campaign, a quarter
transactional over 20 group_ids, the rest from 199 other campaigns (one of which, like one
group_id, has no errors), and a few hundred for one user's installs; optionally SDK app opens
(--app-opens, which the campaign statistics read too); four custom audiences (one of 100,000
custom ids); a profile for that user; import sources, export destinations and a few dashboard
accounts. Then starts `clarion serve --no-workers` (core 0; this client on core 1), signs in as
an admin and times every main page: N requests after a few warm-ups each, over HTTP. The live
audience estimate (it counts the matching installations of the app) is reported apart. Each
page is also requested once in this process (httpx.ASGITransport) to count its SQL statements:
a count that grows with the rows shown would be a query per row.

Target (the dashboard issue): pages in under 200 ms with 1,000,000 installs and 1,000 campaigns.

    .venv/bin/python -m bench.dashboard_pages
    .venv/bin/python -m bench.dashboard_pages --db sqlite --push-events 100000 --timeout 20

A request slower than --timeout gives its page up (and restarts the server): on SQLite the
big campaign's statistics do not finish at 100,000 push events.

--keep-database leaves the seeded PostgreSQL database behind (its URL is printed) and
--database-url URL times the pages of such a database again without seeding it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from cryptography.fernet import Fernet
from sqlalchemy import Engine, event, select, text
from sqlalchemy.ext.asyncio import AsyncSession

if not __package__:  # run as a file (python bench/dashboard_pages.py) rather than with -m
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    PG_ADMIN,
    analyze,
    create_bench_app,
    pg_database,
    pin,
    report,
    serve_clarion,
)
from clarion.app import create_app
from clarion.apps.models import App
from clarion.apps.service import AppAccess, live_access
from clarion.audiences import service as audiences
from clarion.audiences.models import AudienceKind
from clarion.campaigns import service as campaigns
from clarion.campaigns.models import Campaign, CampaignRun, CampaignState, RunState
from clarion.config import Settings
from clarion.custom_data import service as custom_data
from clarion.custom_data.models import AttributeKind
from clarion.custom_data.schemas import ReplaceTags, SetAttribute
from clarion.dashboard import service as dashboard
from clarion.dashboard.schemas import UserCreate
from clarion.dashboard.web import SESSION_COOKIE
from clarion.db import transaction
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send, SendKind
from clarion.events.models import PushEvent
from clarion.events.service import recount_push_events
from clarion.exports import service as exports
from clarion.exports.schemas import DestinationIn
from clarion.imports import service as imports
from clarion.imports.schemas import ImportSourceIn
from clarion.migrate import migrate
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from clarion.stats.tasks import attribute_finished_days, attribute_open_days

API_PORT = int(os.environ.get("CLARION_BENCH_API_PORT", "18002"))
TARGET_MS = 200.0
ADMIN = "admin@bench.example"
PASSWORD = "correct horse battery staple"
USER = "user-42"  # the user looked up (install-42 and two more installs)
BIG_CAMPAIGN = "Big campaign"  # a quarter of the push events
QUIET_CAMPAIGN = "Quiet campaign"  # about 5,000 push events, none of them an error
EDITED_CAMPAIGN = "Edited campaign"  # a scheduled, targeted campaign opened in the editor
SEARCH = "winter"  # the campaign list's name search
GROUP = "group-3"  # the group_id page
QUIET_GROUP = "group-19"  # a group_id without errors
SPAN = 30 * 86400  # push events spread over the last 30 days
ESTIMATE = "live estimate (b.language = fr)"  # counts the app's installs: reported apart
NAMES = ("Spring sale", "Winter deals", "Weekly digest", "Cart reminder", "New feature")


@dataclass
class Seeded:
    app_id: int
    tokens: dict[str, str]  # of BIG_CAMPAIGN, QUIET_CAMPAIGN and EDITED_CAMPAIGN
    setup_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Page:
    label: str
    path: str
    form: dict[str, str] | None = None  # a POST with the session's CSRF header when set


class Dialect:
    """The few SQL pieces the bulk INSERT ... SELECT statements need that differ."""

    def __init__(self, name: str) -> None:
        self.postgres = name == "postgresql"

    def series(self) -> str:
        """A FROM item of rows n = 0 … :count - 1 (64-bit)."""
        if self.postgres:
            return "generate_series(CAST(0 AS bigint), CAST(:count AS bigint) - 1) AS s(n)"
        return (
            "(WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n + 1 < :count)"
            " SELECT n FROM s) AS s"
        )

    def ago(self, seconds: str) -> str:
        """:now minus `seconds`, as a UtcDateTime column stores it."""
        if self.postgres:
            return f"(CAST(:now AS timestamptz) - ({seconds}) * interval '1 second')"
        moved = f"strftime('%Y-%m-%d %H:%M:%S', :now, '-' || ({seconds}) || ' seconds')"
        return f"({moved} || '.000000')"

    def token(self, n: str) -> str:
        """A 64-hex-digit APNs token, unique per n."""
        if self.postgres:
            return f"(md5('a' || {n}) || md5('b' || {n}))"
        return "lower(hex(randomblob(32)))"

    def now(self, now: datetime) -> Any:
        return now if self.postgres else now.strftime("%Y-%m-%d %H:%M:%S")


def _installs_sql(sql: Dialect) -> str:
    return (
        "INSERT INTO installations (app_id, install_id, is_dev, push_token, custom_id, language,"
        " region, timezone, app_version, os_version, device_model, push_optin, optin_changed_at,"
        " created_at, last_seen_at)"
        f" SELECT :app, 'install-' || n, false, CASE WHEN n % 10 <> 9 THEN {sql.token('n')} END,"
        " CASE WHEN n % 10 < 7 THEN 'user-' || n END,"
        " CASE n % 5 WHEN 0 THEN 'en' WHEN 1 THEN 'fr' WHEN 2 THEN 'de' WHEN 3 THEN 'es'"
        " ELSE 'it' END,"
        " CASE n % 4 WHEN 0 THEN 'US' WHEN 1 THEN 'FR' WHEN 2 THEN 'DE' ELSE 'GB' END,"
        " CASE n % 4 WHEN 0 THEN 'America/New_York' WHEN 1 THEN 'Europe/Paris'"
        " WHEN 2 THEN 'Europe/Berlin' ELSE 'Europe/London' END,"
        " '5.' || (n % 7), '17.' || (n % 5), 'iPhone1' || (n % 6), n % 10 < 8,"
        f" {sql.ago('n % 86400')}, {sql.ago('(n % 365) * 86400 + 7200')},"
        f" {sql.ago('(n % 45) * 86400 + n % 86400')}"
        f" FROM {sql.series()}"
    )


def _events_sql(sql: Dialect) -> str:
    """Blocks of 20 events: slots 0-15 sent, 16-18 opens of the installs of slots 0-2 (ten
    minutes after their send), 19 an error. Block b belongs to the big campaign when b % 4 = 0,
    is transactional (group_id group-(b / 4 % 20)) when b % 4 = 1, and comes from another
    campaign otherwise: the quiet one when b % 199 = 0, else one of 198 campaigns (events only).
    The quiet campaign and group QUIET_GROUP have no errors (slot 19 is a send)."""
    ago = f"m * {SPAN} / :count + CASE WHEN slot BETWEEN 16 AND 18 THEN 600 ELSE 1200 END"
    return (
        "INSERT INTO push_events (app_id, kind, occurred_at, platform, install_id, custom_id,"
        " push_token, send_token, group_id, campaign_token, reason)"
        " SELECT :app, CASE WHEN slot < 16 OR (slot = 19 AND quiet = 1) THEN 'push_sent'"
        " WHEN slot < 19 THEN 'push_opened' ELSE 'push_error' END,"
        f" {sql.ago(ago)},"
        " 'ios', 'install-' || i, CASE WHEN i % 10 < 7 THEN 'user-' || i END,"
        f" CASE WHEN i % 10 <> 9 THEN {sql.token('i')} END,"
        " CASE WHEN category = 0 THEN :big_send WHEN category = 1 THEN 'tx-' || block"
        " WHEN block % 199 = 0 THEN :quiet_send ELSE 'send-' || (block % 199) END,"
        " CASE category WHEN 1 THEN 'group-' || (block / 4 % 20) END,"
        " CASE WHEN category = 0 THEN :big WHEN category = 1 THEN NULL"
        " WHEN block % 199 = 0 THEN :quiet ELSE 'campaign-' || (block % 199) END,"
        " CASE WHEN slot = 19 AND quiet = 0 THEN CASE WHEN block % 2 = 0 THEN 'BadDeviceToken'"
        " ELSE 'Unregistered' END END"
        " FROM (SELECT slot, block, block % 4 AS category, m, m * 7919 % :installs AS i,"
        "  CASE WHEN (block % 4 = 1 AND block / 4 % 20 = 19) OR (block % 4 > 1 AND block % 199 = 0)"
        "  THEN 1 ELSE 0 END AS quiet"
        "  FROM (SELECT n % 20 AS slot, n / 20 AS block,"
        "   CASE WHEN n % 20 BETWEEN 16 AND 18 THEN n - 16 ELSE n END AS m"
        f"   FROM {sql.series()}) AS numbered) AS e"
    )


def _app_opens_sql(sql: Dialect) -> str:
    """SDK app opens (tracked events `_open`), spread over the same 30 days: what the campaign
    statistics' influenced and re-engaged opens are computed from."""
    return (
        "INSERT INTO tracked_events (app_id, occurred_at, install_id, custom_id, name)"
        f" SELECT :app, {sql.ago(f'n * {SPAN} / :count')}, 'install-' || i,"
        " CASE WHEN i % 10 < 7 THEN 'user-' || i END, '_open'"
        f" FROM (SELECT n, n * 7919 % :installs AS i FROM {sql.series()}) AS e"
    )


@contextmanager
def timed(setup: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    setup[name] = round(time.monotonic() - started, 1)
    print(f"  {name}: {setup[name]} s", flush=True)


async def seed(settings: Settings, args: argparse.Namespace) -> Seeded:
    runtime = Runtime(settings)
    sql = Dialect(runtime.engine.dialect.name)
    setup: dict[str, float] = {}
    now = datetime.now(UTC)
    try:
        async with transaction(runtime.sessions) as session:
            app = await create_bench_app(session, runtime.box, "ios")
        access = live_access(app)
        with timed(setup, "installs_s"):
            async with transaction(runtime.sessions) as session:
                await session.execute(
                    text(_installs_sql(sql)),
                    {"app": app.id, "count": args.installs, "now": sql.now(now)},
                )
                for suffix in ("ipad", "old-phone"):  # the looked-up user has three installs
                    session.add(
                        Installation(
                            app_id=app.id,
                            install_id=f"install-{USER}-{suffix}",
                            custom_id=USER,
                            push_token=secrets.token_hex(32),
                            push_optin=suffix == "ipad",
                            language="fr",
                            created_at=now - timedelta(days=200),
                            last_seen_at=now - timedelta(days=3),
                        )
                    )
        with timed(setup, "campaigns_s"):
            tokens = await _campaigns(runtime, access, args.campaigns, now)
        big, quiet = tokens[BIG_CAMPAIGN], tokens[QUIET_CAMPAIGN]
        with timed(setup, "push_events_s"):
            async with transaction(runtime.sessions) as session:
                await session.execute(
                    text(_events_sql(sql)),
                    {
                        "app": app.id,
                        "count": args.push_events,
                        "installs": args.installs,
                        "now": sql.now(now),
                        "big": big,
                        "big_send": f"send-{big}",
                        "quiet": quiet,
                        "quiet_send": f"send-{quiet}",
                    },
                )
                session.add_all(_user_events(app.id, big, now))
        if args.app_opens:
            with timed(setup, "app_opens_s"):
                async with transaction(runtime.sessions) as session:
                    await session.execute(
                        text(_app_opens_sql(sql)),
                        {
                            "app": app.id,
                            "count": args.app_opens,
                            "installs": args.installs,
                            "now": sql.now(now),
                        },
                    )
        with timed(setup, "audiences_s"):
            await _audiences(runtime, app.id, args.audience_members, now)
        with timed(setup, "profile_sources_accounts_s"):
            await _the_rest(runtime, app, now)
        with timed(setup, "analyze_s"):
            await analyze(runtime)
        # The events went in by SQL, around the event writer: count them as it would have, then
        # store the influenced and re-engaged opens as the workers do each minute (finished days
        # once, the days still open provisionally).
        with timed(setup, "event_counts_s"):
            async with transaction(runtime.sessions) as session:
                await recount_push_events(session)
        with timed(setup, "finished_days_s"):
            stored = 1
            while stored:
                async with transaction(runtime.sessions) as session:
                    stored = await attribute_finished_days(session, limit=100)
                    setup["finished_days_stored"] = setup.get("finished_days_stored", 0) + stored
        with timed(setup, "open_days_s"):
            async with transaction(runtime.sessions) as session:
                setup["open_days_stored"] = await attribute_open_days(session)
        return Seeded(app.id, tokens, setup)
    finally:
        await runtime.engine.dispose()


async def _campaigns(
    runtime: Runtime, access: AppAccess, count: int, now: datetime
) -> dict[str, str]:
    """`count` campaigns through the service, one created an hour for the last `count` hours;
    the last three are the edited one, and the quiet and big ones (completed 30 days ago, each
    with its run and send). Returns the tokens of those three."""
    special = {count - 1: BIG_CAMPAIGN, count - 2: QUIET_CAMPAIGN, count - 3: EDITED_CAMPAIGN}
    tokens: dict[str, str] = {}
    async with transaction(runtime.sessions) as session:
        for n in range(count):
            name = special.get(n, f"{NAMES[n % len(NAMES)]} {n:04d}")
            scheduled = n % 3 == 0 or n in special
            document: dict[str, Any] = {
                "name": name,
                "live": scheduled,
                "push_time": "2031-06-01T09:00:00" if scheduled else "now",
                "messages": [
                    {"language": "en", "title": f"Hello {n}", "body": "A message for you"},
                    {"language": "fr", "title": f"Bonjour {n}", "body": "Un message pour vous"},
                ],
                "deeplink": "myapp://offers",
            }
            if n % 4 == 0 or name == EDITED_CAMPAIGN:
                document["targeting"] = {
                    "languages": ["fr", "en"],
                    "query": {"$and": [{"b.app_version": {"$gte": "5.2"}}, {"b.region": "FR"}]},
                }
            campaign = await campaigns.create_campaign(
                session,
                access=access,
                body=campaigns.validate_body(document),
                now=now - timedelta(hours=count - n),
                from_api=n % 2 == 0,
            )
            if n in special:
                tokens[name] = campaign.token
            if name in (BIG_CAMPAIGN, QUIET_CAMPAIGN):
                await _completed(session, campaign, now - timedelta(days=30))
    return tokens


async def _completed(session: AsyncSession, campaign: Campaign, when: datetime) -> None:
    """The campaign ran once, at `when`: its run and its send, as the scheduler leaves them."""
    campaign.state = CampaignState.COMPLETED.value
    campaign.next_run_at = None
    run = CampaignRun(
        campaign_id=campaign.id,
        occurrence=0,
        scheduled_for=when,
        state=RunState.DONE.value,
        body=campaign.body,
        targeted=400_000,
        started_at=when,
        finished_at=when,
    )
    session.add(run)
    await session.flush()
    send = Send(
        token=f"send-{campaign.token}",
        app_id=campaign.app_id,
        kind=SendKind.CAMPAIGN.value,
        campaign_token=campaign.token,
        run_id=run.id,
        content={},
        created_at=when,
    )
    session.add(send)
    await session.flush()
    # A send's progress is the sum of its batches' counters (docs/architecture.md, step 3).
    session.add(
        DeliveryBatch(
            send_id=send.id,
            status=BatchStatus.DONE.value,
            recipients={},
            created_at=when,
            finished_at=when,
            targeted=400_000,
            sent=400_000,
        )
    )


def _user_events(app_id: int, big_token: str, now: datetime) -> list[PushEvent]:
    """A few hundred pushes of the looked-up user's installs, over the last 30 days."""
    installs = ["install-42", f"install-{USER}-ipad", f"install-{USER}-old-phone"]
    events = []
    for n in range(300):
        kind = ("push_sent", "push_sent", "push_opened", "push_error")[n % 4]
        events.append(
            PushEvent(
                app_id=app_id,
                kind=kind,
                occurred_at=now - timedelta(seconds=n * SPAN / 300),
                platform="ios",
                install_id=installs[n % 3],
                custom_id=USER,
                send_token=f"send-{big_token}" if n % 2 else f"tx-user-{n}",
                group_id=None if n % 2 else GROUP,
                campaign_token=big_token if n % 2 else None,
                reason="BadDeviceToken" if kind == "push_error" else None,
            )
        )
    return events


async def _audiences(runtime: Runtime, app_id: int, members: int, now: datetime) -> None:
    """One audience of `members` custom ids (every other user), three small ones."""
    lists = [
        ("vip", AudienceKind.CUSTOM_IDS, [f"user-{2 * n}" for n in range(members)]),
        ("newsletter", AudienceKind.CUSTOM_IDS, [f"user-{7 * n}" for n in range(1000)]),
        ("beta-installs", AudienceKind.INSTALL_IDS, [f"install-{3 * n}" for n in range(500)]),
        ("retarget", AudienceKind.ADVERTISING_IDS, [f"idfa-{n}" for n in range(100)]),
    ]
    for name, kind, ids in lists:
        async with transaction(runtime.sessions) as session:
            await audiences.replace_audience(
                session,
                app_id=app_id,
                name=name,
                kind=kind,
                description=f"{name} ({len(ids):,} ids)",
                members=[(member, None, None) for member in ids],
                now=now,
            )


async def _the_rest(runtime: Runtime, app: App, now: datetime) -> None:
    """The user's profile, three import sources, three export destinations, five accounts."""
    async with transaction(runtime.sessions) as session:
        await custom_data.update_profiles(
            session,
            app_id=app.id,
            updates=[
                (
                    USER,
                    False,
                    [
                        SetAttribute("plan", AttributeKind.STRING, "premium", None),
                        SetAttribute("credit", AttributeKind.INTEGER, None, 120.0),
                        SetAttribute("is_beneficiary", AttributeKind.BOOLEAN, None, 1.0),
                        ReplaceTags("interests", ("music", "sport")),
                    ],
                )
            ],
        )
        for n in range(3):
            await imports.create_source(
                session,
                app_id=app.id,
                body=ImportSourceIn.model_validate(
                    {
                        "name": f"crm-{n}",
                        "url": f"file:///srv/imports/crm-{n}",
                        "id_type": "custom_ids",
                        "audience_name": f"crm-{n}",
                    }
                ),
                box=runtime.box,
                outbound=runtime.outbound,
                now=now,
            )
        for kind in ("push_events", "optin_users", "inapp_events"):
            await exports.create_destination(
                session,
                app_id=app.id,
                body=DestinationIn.model_validate(
                    {"name": kind, "kind": kind, "url": f"file:///srv/exports/{kind}"}
                ),
                box=runtime.box,
                outbound=runtime.outbound,
                now=now,
            )
        for email, role in [(ADMIN, "admin")] + [
            (f"{role}-{n}@bench.example", role) for n, role in enumerate(["editor", "viewer"] * 2)
        ]:
            await dashboard.create_user(
                session,
                company_id=app.company_id,
                user_in=UserCreate.model_validate(
                    {"email": email, "password": PASSWORD, "role": role}
                ),
                now=now,
            )


async def found_seeded(settings: Settings) -> Seeded:
    """What an earlier --keep-database run seeded."""
    runtime = Runtime(settings)
    try:
        async with runtime.sessions() as session:
            app_id = await session.scalar(select(App.id).where(App.name == "bench"))
            named = await session.execute(
                select(Campaign.name, Campaign.token).where(
                    Campaign.name.in_([BIG_CAMPAIGN, QUIET_CAMPAIGN, EDITED_CAMPAIGN])
                )
            )
            tokens = dict(named.all())
        assert app_id is not None, "no bench app in that database"
        return Seeded(app_id, tokens)
    finally:
        await runtime.engine.dispose()


async def signed_in(settings: Settings) -> tuple[str, str]:
    """A new session of the admin account: (cookie token, CSRF token)."""
    runtime = Runtime(settings)
    try:
        async with transaction(runtime.sessions) as session:
            token, viewer = await dashboard.sign_in(
                session, email=ADMIN, password=PASSWORD, client="bench", now=datetime.now(UTC)
            )
        return token, viewer.csrf_token
    finally:
        await runtime.engine.dispose()


def pages(seeded: Seeded) -> list[Page]:
    app = f"/dashboard/apps/{seeded.app_id}"
    tokens = seeded.tokens
    return [
        Page("apps", "/dashboard/"),
        Page("campaigns, page 1", f"{app}/campaigns"),
        Page("campaigns, page 40", f"{app}/campaigns?page=40"),
        Page(f"campaigns, search '{SEARCH}'", f"{app}/campaigns?q={SEARCH}"),
        Page("campaign editor, new", f"{app}/campaigns/new"),
        Page("campaign editor, existing", f"{app}/campaigns/{tokens[EDITED_CAMPAIGN]}"),
        Page("campaign stats, big campaign", f"{app}/campaigns/{tokens[BIG_CAMPAIGN]}/stats"),
        Page("campaign stats, no errors", f"{app}/campaigns/{tokens[QUIET_CAMPAIGN]}/stats"),
        Page("analytics (group_ids, 7 days)", f"{app}/analytics"),
        Page(f"analytics, {GROUP} (30 days)", f"{app}/analytics/groups/{GROUP}"),
        Page(f"analytics, {QUIET_GROUP} (no errors)", f"{app}/analytics/groups/{QUIET_GROUP}"),
        Page("audiences", f"{app}/audiences"),
        Page("audiences, imports", f"{app}/audiences/imports"),
        Page("audiences, exports", f"{app}/audiences/exports"),
        Page(f"people, {USER}", f"{app}/people?q={USER}&by=custom_id"),
        Page("settings", f"{app}/settings"),
        Page("team", "/dashboard/team"),
        Page(
            ESTIMATE,
            f"{app}/estimate",
            form={"q_field": "b.language", "q_op": "$eq", "q_value": "fr"},
        ),
    ]


def _check(page: Page, response: httpx.Response) -> None:
    if response.status_code != 200 or (page.form is not None and "alert" in response.text):
        raise RuntimeError(f"{page.label}: {response.status_code} {response.text[:300]}")


def time_pages(
    base_url: str,
    token: str,
    csrf: str,
    listed: list[Page],
    requests: int,
    warmups: int,
    timeout: float,
    restart: Callable[[], None],
) -> dict[str, dict[str, Any]]:
    """Median and p95 of each page. A page that takes longer than `timeout` once is given up
    (median None) and the server restarted: its query would go on slowing the next pages."""
    timings: dict[str, dict[str, Any]] = {}
    headers = {"X-CSRF-Token": csrf}
    with httpx.Client(base_url=base_url, timeout=timeout, headers=headers) as client:
        client.cookies.set(SESSION_COOKIE, token)
        for page in listed:
            samples = []
            for n in range(warmups + requests):
                started = time.perf_counter()
                try:
                    if page.form is None:
                        response = client.get(page.path)
                    else:
                        response = client.post(page.path, data=page.form)
                except httpx.TimeoutException:
                    break
                elapsed = (time.perf_counter() - started) * 1000
                _check(page, response)
                if n >= warmups:
                    samples.append(elapsed)
            samples.sort()
            if len(samples) < requests:
                timings[page.label] = {"median_ms": None, "p95_ms": None, "kb": None}
                print(f"  {page.label}: over {timeout} s, given up", flush=True)
                restart()
                continue
            timings[page.label] = {
                "median_ms": round(statistics.median(samples), 1),
                "p95_ms": round(samples[min(len(samples) - 1, round(0.95 * len(samples)) - 1)], 1),
                "kb": round(len(response.content) / 1024, 1),
            }
            print(f"  {page.label}: {timings[page.label]}", flush=True)
    return timings


async def count_queries(
    settings: Settings, token: str, csrf: str, listed: list[Page], skip: set[str]
) -> dict[str, int]:
    """The SQL statements of one request of each page (but those in `skip`), served in this
    process."""
    app = create_app(settings, workers=False)
    statements = 0

    def counted(*_: Any) -> None:
        nonlocal statements
        statements += 1

    found = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers={"X-CSRF-Token": csrf}
        ) as client:
            client.cookies.set(SESSION_COOKIE, token)
            event.listen(Engine, "before_cursor_execute", counted)
            try:
                for page in listed:
                    if page.label in skip:
                        continue
                    statements = 0
                    if page.form is None:
                        response = await client.get(page.path)
                    else:
                        response = await client.post(page.path, data=page.form)
                    _check(page, response)
                    found[page.label] = statements
            finally:
                event.remove(Engine, "before_cursor_execute", counted)
    return found


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _under(figures: dict[str, Any]) -> bool:
    return figures["median_ms"] is not None and figures["median_ms"] < TARGET_MS


def print_table(timings: dict[str, dict[str, Any]], queries: dict[str, int]) -> None:
    print(f"\n{'page':<36} {'median ms':>10} {'p95 ms':>8} {'SQL':>4} {'KB':>6}  < 200 ms")
    for label, figures in timings.items():
        under = "yes" if _under(figures) else "NO"
        if label == ESTIMATE:
            print("the editor's live audience estimate (a fragment, not a page):")
        print(
            f"{label:<36} {figures['median_ms'] or 'timeout':>10} {figures['p95_ms'] or '-':>8}"
            f" {queries.get(label, '-'):>4} {figures['kb'] or '-':>6}  {under}"
        )


def _stop(server: subprocess.Popen[bytes]) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:  # still answering a given-up page
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _kept_database() -> str:
    name = f"clarion_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--installs", type=int, default=1_000_000)
    parser.add_argument("--campaigns", type=int, default=1_000)
    parser.add_argument("--push-events", type=int, default=2_000_000)
    parser.add_argument("--audience-members", type=int, default=100_000)
    parser.add_argument("--app-opens", type=int, default=0, help="SDK app opens (tracked)")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--keep-database", action="store_true", help="PostgreSQL: not dropped")
    parser.add_argument("--database-url", help="a database kept by --keep-database: no seeding")
    parser.add_argument("--secret-key", default="", help="with --database-url: its secret key")
    args = parser.parse_args()
    with ExitStack() as stack:
        var = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        secret = args.secret_key or Fernet.generate_key().decode()
        if args.database_url:
            url = args.database_url
        elif args.db == "sqlite":
            url = f"sqlite:///{var / 'bench.db'}"
        elif args.keep_database:
            url = _kept_database()
            print(f"kept database: {url}  (--secret-key {secret})")
        else:
            url = stack.enter_context(pg_database())
        settings = Settings(database_url=url, var_dir=var, secret_key=secret)
        if args.database_url:
            seeded = asyncio.run(found_seeded(settings))
        else:
            print(f"seeding ({load_average()} load average)", flush=True)
            started = time.monotonic()
            migrate(settings)
            seeded = asyncio.run(seed(settings, args))
            seeded.setup_s["total_s"] = round(time.monotonic() - started, 1)
        token, csrf = asyncio.run(signed_in(settings))
        env = {
            "CLARION_DATABASE_URL": url,
            "CLARION_VAR_DIR": str(var),
            "CLARION_SECRET_KEY": secret,
        }
        server = [serve_clarion(API_PORT, env, workers=False)]

        def restart() -> None:
            _stop(server[0])
            server[0] = serve_clarion(API_PORT, env, workers=False)

        try:
            pin(1)
            load_before = load_average()
            print(f"timing pages ({load_before} load average)", flush=True)
            listed = pages(seeded)
            timings = time_pages(
                f"http://127.0.0.1:{API_PORT}",
                token,
                csrf,
                listed,
                args.requests,
                args.warmups,
                args.timeout,
                restart,
            )
            load_after = load_average()
        finally:
            _stop(server[0])
        given_up = {label for label, figures in timings.items() if figures["median_ms"] is None}
        queries = asyncio.run(count_queries(settings, token, csrf, listed, given_up))
    print_table(timings, queries)
    print(f"load average (1, 5, 15 min): {load_before} before, {load_after} after")
    print(f"setup: {seeded.setup_s}")
    report(
        f"dashboard_pages_{args.db}",
        {
            "database": args.db,
            "installs": args.installs,
            "campaigns": args.campaigns,
            "push_events": args.push_events,
            "audience_members": args.audience_members,
            "app_opens": args.app_opens,
            "requests_per_page": args.requests,
            "warmups": args.warmups,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "setup_s": seeded.setup_s,
            "pages": {
                label: {
                    **figures,
                    "sql_statements": queries.get(label),
                    "under_200_ms": _under(figures),
                }
                for label, figures in timings.items()
                if label != ESTIMATE
            },
            "live_estimate": {**timings[ESTIMATE], "sql_statements": queries.get(ESTIMATE)},
        },
    )


if __name__ == "__main__":
    main()
