"""The SDK's fetch of the in-app messages due for an installation (issue 19's figures).

Seeds N installations (languages, regions, time zones, install dates and a custom attribute
varied by id), a custom audience holding a fifth of the users, server events for some, and
200 live in-app campaigns whose targeting mixes segments, languages, regions, queries on native
and custom data, the audience, local dates, A/B versions and event triggers, plus a few that
must never be handed out (ended, not started, drafts, deleted). Then, against one `clarion
serve` process on PostgreSQL:

1. checks the answers of a sample of installations against the targeting engine itself (each
   campaign's `installation_filter` counted over the sample) and that `inapp_supplied` was
   counted once per installation and campaign, before printing any figure;
2. times fetches one at a time (round trip, an upper bound of server time): p50 and p99;
3. full fetches per second with h2load (HTTP/1.1, 32 connections, sampled installations);
4. 304 answers per second (installations whose answer, hence ETag, is the same);
5. how long a campaign update takes to change what an installation receives, the update made
   by another process (this one) than the server.

    .venv/bin/python -m bench.inapp_fetch --installations 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

from bench.common import analyze, h2load, pg_database, pin, report, serve_clarion
from clarion.apps import service as apps
from clarion.apps.schemas import AppCreate
from clarion.apps.service import AppAccess, live_access
from clarion.audiences.models import AUDIENCE_MEMBERS, Audience, AudienceKind
from clarion.audiences.resolved import build_generation
from clarion.config import Settings
from clarion.db import bulk_insert, transaction, utcnow
from clarion.demo import seed_installations
from clarion.inapp import service as inapp
from clarion.inapp.eligibility import load_catalogue
from clarion.inapp.models import InAppSupply
from clarion.inapp.schemas import InAppCampaignBody
from clarion.migrate import migrate
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from clarion.targeting.schemas import Targeting
from clarion.targeting.service import installation_filter

API_PORT = int(os.environ.get("CLARION_BENCH_API_PORT", "18004"))
LANGUAGES = ["en", "fr", "de", "es", "pt-BR", "it", "ja"]
REGIONS = ["FR", "US", "DE", "ES", "BR", "GB", "IT", "JP"]
ZONES = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", "America/Sao_Paulo"]
SAMPLE = 400  # installations whose answers are checked against the targeting engine


@dataclass
class Seeded:
    access: AppAccess
    api_key: str
    install_ids: list[str]  # a random sample of the app's installations
    campaigns: dict[str, InAppCampaignBody] = field(default_factory=dict)  # token -> body
    never: set[str] = field(default_factory=set)  # tokens no installation may receive


def landing(title: str, versions: tuple[str, ...] = ()) -> dict[str, Any]:
    def content(language: str, version: str | None) -> dict[str, Any]:
        return {
            "language": language,
            **({"version": version} if version else {}),
            "header": "Clarion",
            "title": f"{title} ({language})",
            "body": "A message drawn by the SDK, with two buttons.",
            "actions": [
                {"label": "Open", "action": "deeplink", "args": {"l": "https://example.com/x"}},
                {"label": "Later", "action": "dismiss"},
            ],
        }

    return {
        "theme": "default",
        "contents": [content(lang, v) for v in (versions or (None,)) for lang in ("en", "fr")],
    }


def campaign_bodies(long_ago: str, past: str, future: str) -> list[tuple[dict[str, Any], bool]]:
    """200 live campaigns with varied targeting, and those no one may receive (body, never)."""
    bodies: list[tuple[dict[str, Any], bool]] = []

    def add(n: int, targeting: dict[str, Any], never: bool = False, **extra: Any) -> None:
        body = {
            "name": f"in-app {len(bodies)}",
            "live": True,
            "trigger": {"when": "NEXT_SESSION", "capping": 3},
            "targeting": targeting,
            "landing": landing(f"Campaign {len(bodies)}", extra.pop("versions", ())),
            **extra,
        }
        for _ in range(n):
            bodies.append(({**body, "name": f"in-app {len(bodies)}"}, never))

    for i in range(40):
        add(1, {"languages": [LANGUAGES[i % 7]], "regions": [REGIONS[i % 8]]})
    for i in range(30):
        add(
            1,
            {
                "segments": [["NEW"], ["ENGAGED"], ["DORMANT"], ["ONE_TIME"]][i % 4],
                "regions": [REGIONS[i % 8]],
            },
        )
    for i in range(40):
        add(1, {"query": {"$and": [{"c.tier": {"$gte": i % 10}}, {"b.region": REGIONS[i % 8]}]}})
    for i in range(20):
        add(1, {"custom_audiences": ["vip"], "languages": [LANGUAGES[i % 7]]})
    for i in range(20):
        add(
            1,
            {"regions": [REGIONS[i % 8]], "languages": [LANGUAGES[(i + 3) % 7]]},
            local_start_date=past,
            local_end_date=future,
        )
    for i in range(20):
        add(
            1,
            {"query": {"b.language": LANGUAGES[i % 7]}, "regions": [REGIONS[(i + 1) % 8]]},
            versions=("a", "b"),
        )
    for i in range(20):
        add(
            1,
            {"query": {"c.tier": {"$lt": 1 + i % 5}}, "regions": [REGIONS[i % 8]]},
            trigger={"when": "EVENT", "event": "ue.purchase", "capping": 1},
        )
    for i in range(10):
        add(1, {"regions": [REGIONS[i % 8]]}, start_date=past, end_date=future)
    # Never handed out: ended, not yet started, a draft (and one deleted after creation).
    add(3, {}, never=True, start_date=long_ago, end_date=past)
    add(3, {}, never=True, start_date=future)
    add(3, {}, never=True, live=False)
    return bodies


async def seed(runtime: Runtime, installations: int) -> Seeded:
    async with transaction(runtime.sessions) as session:
        company, _ = await apps.create_company(session, name="Bench")
        app, keys = await apps.create_app(
            session,
            company_id=company.id,
            app_in=AppCreate(name="bench", platform="android"),
            box=runtime.box,
        )
    started = time.monotonic()
    await seed_installations(runtime.sessions, app_id=app.id, count=installations)
    now = utcnow()
    async with transaction(runtime.sessions) as session:
        languages = " ".join(f"WHEN {i} THEN '{code}'" for i, code in enumerate(LANGUAGES))
        regions = " ".join(f"WHEN {i} THEN '{code}'" for i, code in enumerate(REGIONS))
        zones = " ".join(f"WHEN {i} THEN '{zone}'" for i, zone in enumerate(ZONES))
        await session.execute(
            text(
                f"UPDATE installations SET language = CASE id % 7 {languages} END, "
                f"region = CASE id % 8 {regions} END, timezone = CASE id % 5 {zones} END, "
                "created_at = :now - (id % 60) * interval '1 day', "
                "last_seen_at = :now - (id % 45) * interval '1 day' WHERE app_id = :app"
            ),
            {"now": now, "app": app.id},
        )
        # A custom attribute for every user, server events for one in ten.
        await bulk_insert(
            session,
            "profile_attributes",
            ("app_id", "custom_id", "name", "kind", "number_value", "updated_at"),
            [
                (app.id, f"user-{n}", "tier", "number", float(n % 10), now)
                for n in range(installations)
            ],
        )
        await bulk_insert(
            session,
            "tracked_events",
            ("app_id", "occurred_at", "custom_id", "name"),
            [
                (app.id, now - timedelta(hours=n % 48), f"user-{n}", "ue.purchase")
                for n in range(0, installations, 10)
            ],
        )
        audience = Audience(
            app_id=app.id, name="vip", kind="custom_ids", generation=0, nb_ids=installations // 5
        )
        session.add(audience)
        await session.flush()
        await bulk_insert(
            session,
            AUDIENCE_MEMBERS.name,
            ("audience_id", "generation", "member_id"),
            [(audience.id, 0, f"user-{n}") for n in range(0, installations, 5)],
        )
        await build_generation(
            session, audience=audience, kind=AudienceKind.CUSTOM_IDS, generation=0
        )
    access = live_access(app)
    day = timedelta(days=1)
    long_ago = (now - 4 * day).strftime("%Y-%m-%dT%H:%M:%S")
    past = (now - 2 * day).strftime("%Y-%m-%dT%H:%M:%S")
    future = (now + 2 * day).strftime("%Y-%m-%dT%H:%M:%S")
    seeded = Seeded(access=access, api_key=keys.api_key, install_ids=[])
    async with transaction(runtime.sessions) as session:
        for document, never in campaign_bodies(long_ago, past, future):
            body = inapp.validate_body(document)
            campaign = await inapp.create_campaign(
                session, access=access, body=body, now=now, from_api=True
            )
            seeded.campaigns[campaign.token] = body
            if never:
                seeded.never.add(campaign.token)
        deleted = await inapp.create_campaign(
            session,
            access=access,
            body=inapp.validate_body(campaign_bodies(long_ago, past, future)[0][0]),
            now=now,
        )
        await inapp.delete_campaign(session, access=access, token=deleted.token, now=now)
        seeded.never.add(deleted.token)
    async with runtime.sessions() as session:
        ids = await session.scalars(
            select(Installation.install_id)
            .where(Installation.app_id == app.id)
            .order_by(func.random())
            .limit(20_000)
        )
        seeded.install_ids = list(ids)
    await analyze(runtime)
    print(f"seeded {installations:,} installations in {time.monotonic() - started:.0f} s")
    return seeded


async def expected_answers(
    runtime: Runtime, seeded: Seeded, sample: list[str]
) -> dict[str, set[str]]:
    """The tokens each sampled installation must receive, by the targeting engine itself (the
    dates of the live campaigns are chosen to hold now in every zone)."""
    expected: dict[str, set[str]] = {install_id: set() for install_id in sample}
    now = utcnow()
    async with runtime.sessions() as session:
        for token, body in seeded.campaigns.items():
            if token in seeded.never:
                continue
            matched = await session.scalars(
                select(Installation.install_id).where(
                    Installation.app_id == seeded.access.app_id,
                    Installation.install_id.in_(sample),
                    installation_filter(
                        body.targeting or Targeting(), app_id=seeded.access.app_id, now=now
                    ),
                )
            )
            for install_id in matched:
                expected[install_id].add(token)
    return expected


def fetch_url(base: str, seeded: Seeded, install_id: str) -> str:
    return f"{base}/sdk/v1/{seeded.api_key}/installations/{install_id}/inapp-messages"


def check_answers(base: str, seeded: Seeded, expected: dict[str, set[str]]) -> dict[str, str]:
    """Fetch every sampled installation; fail on any difference. Returns their ETags."""
    etags: dict[str, str] = {}
    handed = 0
    with httpx.Client() as client:
        for install_id, tokens in expected.items():
            answer = client.get(fetch_url(base, seeded, install_id))
            answer.raise_for_status()
            got = {message["campaign_token"] for message in answer.json()["messages"]}
            if got != tokens:
                raise SystemExit(
                    f"{install_id}: got {len(got)} campaigns, the engine says {len(tokens)}; "
                    f"extra {sorted(got - tokens)[:3]}, missing {sorted(tokens - got)[:3]}"
                )
            etags[install_id] = answer.headers["etag"]
            handed += len(got)
    print(f"answers of {len(expected)} installations match the engine ({handed} messages)")
    return etags


async def check_supplied(runtime: Runtime, seeded: Seeded, expected: dict[str, set[str]]) -> int:
    """Every (installation, campaign) handed out is counted once, whatever the refetches."""
    want = sum(len(tokens) for tokens in expected.values())
    deadline = time.monotonic() + 30
    while True:
        async with runtime.sessions() as session:
            got = await session.scalar(
                select(func.count())
                .select_from(InAppSupply)
                .join(Installation, Installation.id == InAppSupply.installation_id)
                .where(Installation.install_id.in_(list(expected)))
            )
        if got == want or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)  # the server flushes supplies about once a second
    if got != want:
        raise SystemExit(f"inapp_supplies holds {got} rows for the sample, expected {want}")
    return want


def latencies(base: str, seeded: Seeded, count: int) -> dict[str, float]:
    timings = []
    with httpx.Client() as client:
        for install_id in random.sample(seeded.install_ids, count):
            started = time.perf_counter()
            client.get(fetch_url(base, seeded, install_id)).raise_for_status()
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {
        "p50_ms": round(statistics.median(timings), 2),
        "p99_ms": round(timings[int(len(timings) * 0.99) - 1], 2),
        "fetches": count,
    }


def h2load_rate(uris: list[str], requests: int, headers: list[str], tmp: Path) -> dict[str, Any]:
    listing = tmp / "uris.txt"
    listing.write_text("\n".join(uris) + "\n")
    args = ["--h1", "-c", "32", "-t", "1", "-n", str(requests), "-i", str(listing)]
    for header in headers:
        args += ["-H", header]
    result = h2load(args)
    out = result["output"]
    status = next(ln for ln in out.splitlines() if ln.startswith("status codes:"))
    return {"req_per_s": result["req_per_s"], "status_codes": status.split(":", 1)[1].strip()}


async def change_time(runtime: Runtime, base: str, seeded: Seeded) -> float:
    """Seconds from committing a campaign update (in this process) to a changed answer."""
    token = next(t for t in seeded.campaigns if t not in seeded.never)
    body = seeded.campaigns[token]
    async with runtime.sessions() as session:
        found = await session.scalars(
            select(Installation.install_id)
            .where(
                Installation.app_id == seeded.access.app_id,
                installation_filter(
                    body.targeting or Targeting(), app_id=seeded.access.app_id, now=utcnow()
                ),
            )
            .limit(1)
        )
        install_id = found.one()
    url = fetch_url(base, seeded, install_id)
    with httpx.Client() as client:
        before = client.get(url)
        etag = before.headers["etag"]
        async with transaction(runtime.sessions) as session:
            await inapp.update_campaign(
                session, access=seeded.access, token=token, changes={"live": False}, now=utcnow()
            )
        changed_at = time.monotonic()
        while True:
            answer = client.get(url, headers={"If-None-Match": etag})
            if answer.status_code == 200:
                tokens = {m["campaign_token"] for m in answer.json()["messages"]}
                if token in tokens:
                    raise SystemExit("a new answer still holds the campaign set offline")
                return round(time.monotonic() - changed_at, 2)
            if time.monotonic() - changed_at > 30:
                raise SystemExit("the update did not reach the installation within 30 s")
            time.sleep(0.05)


async def measure(args: argparse.Namespace, url: str, var: Path) -> dict[str, Any]:
    secret = Fernet.generate_key().decode()
    settings = Settings(database_url=url, var_dir=var, secret_key=secret)
    await asyncio.to_thread(migrate, settings)
    runtime = Runtime(settings)
    seeded = await seed(runtime, args.installations)
    async with runtime.sessions() as session:
        catalogue = await load_catalogue(
            session, app_id=seeded.access.app_id, now=utcnow(), dialect=runtime.engine.dialect
        )
    criteria = catalogue.criteria
    env = {
        "CLARION_DATABASE_URL": url,
        "CLARION_VAR_DIR": str(var),
        "CLARION_SECRET_KEY": secret,
        # The 304 run replays at most SAMPLE installations, each ~50 times a second, which the
        # per-installation rate limit (20/s) would refuse: this measures the fetch, not a device.
        "CLARION_SDK_INSTALL_RATE_LIMIT": "0",
    }
    server = serve_clarion(API_PORT, env, workers=False)
    base = f"http://127.0.0.1:{API_PORT}"
    pin(1)
    try:
        sample = seeded.install_ids[:SAMPLE]
        expected = await expected_answers(runtime, seeded, sample)
        never = seeded.never & set().union(*expected.values())
        if never:
            raise SystemExit(f"the engine itself targets campaigns that must not show: {never}")
        etags = await asyncio.to_thread(check_answers, base, seeded, expected)
        await asyncio.to_thread(check_answers, base, seeded, expected)  # again: no new supplies
        supplied = await check_supplied(runtime, seeded, expected)
        per_install = [len(tokens) for tokens in expected.values()]
        await asyncio.to_thread(latencies, base, seeded, 300)  # warm-up
        timing = await asyncio.to_thread(latencies, base, seeded, args.timed)
        uris = [
            f"/sdk/v1/{seeded.api_key}/installations/{i}/inapp-messages" for i in seeded.install_ids
        ]
        full = h2load_rate([base + u for u in uris], args.requests, [], var)
        common_etag, sharing = Counter(etags.values()).most_common(1)[0]
        same = [
            base + u
            for u, i in zip(uris, seeded.install_ids, strict=True)
            if i in etags and etags[i] == common_etag
        ]
        not_modified = h2load_rate(same, args.requests, [f"If-None-Match: {common_etag}"], var)
        if not not_modified["status_codes"].startswith(f"0 2xx, {args.requests} 3xx"):
            raise SystemExit(f"not every conditional fetch was a 304: {not_modified}")
        if not full["status_codes"].startswith(f"{args.requests} 2xx"):
            raise SystemExit(f"not every fetch was a 200: {full}")
        propagation = await change_time(runtime, base, seeded)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        await runtime.engine.dispose()
    return {
        "installations": args.installations,
        "campaigns_live": len(set(seeded.campaigns) - seeded.never),
        "distinct_criteria_evaluated_per_fetch": criteria,
        "campaigns_never_shown": len(seeded.never),
        "checked_installations": len(expected),
        "messages_per_installation_mean": round(statistics.mean(per_install), 1),
        "supplied_checked": supplied,
        "latency_one_at_a_time": timing,
        "full_fetches_per_s": full,
        "not_modified_per_s": {**not_modified, "installations_sharing_the_etag": sharing},
        "update_reaches_installation_s": propagation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--installations", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40_000, help="per h2load run")
    parser.add_argument("--timed", type=int, default=3_000, help="fetches timed one at a time")
    args = parser.parse_args()
    with ExitStack() as stack:
        var = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(pg_database())
        figures = asyncio.run(measure(args, url, var))
    report(f"inapp_fetch_{args.installations}", figures)


if __name__ == "__main__":
    main()
