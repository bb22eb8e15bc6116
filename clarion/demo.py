"""Demo and benchmark data: an app per platform wired to the simulators, and bulk installations.

Used by `make run` (clarion dev) and `clarion devices seed`; never by the API.
"""

from __future__ import annotations

import json
import secrets
import shlex
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps import service as apps
from clarion.apps.models import App
from clarion.apps.schemas import ApnsCredentialsIn, AppCreate, FcmCredentialsIn
from clarion.apps.service import live_access
from clarion.audiences.resolved import installations_changed
from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.config import Settings
from clarion.dashboard import service as dashboard
from clarion.dashboard.schemas import UserCreate
from clarion.db import create_engine, create_sessionmaker, transaction, utcnow
from clarion.events.models import PushEvent, PushEventKind
from clarion.events.service import push_event_row, record_push_events
from clarion.inapp import service as inapp
from clarion.runtime import Runtime
from clarion.sdk.models import Installation

DEMO_TOPIC = "com.example.clarion-demo"
DEMO_CUSTOM_ID = "demo-user"
DEMO_ADMIN = "admin@clarion.demo"
# The group_id of the demo's day of history (_ensure_yesterday).
DEMO_HISTORY_GROUP = "demo-history"
DAY = timedelta(days=1)


def wait_for_port(host: str, port: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing answered on {host}:{port} within {timeout} s")


async def provision_demo(
    settings: Settings, *, sim_url: str, api_url: str, clock: Clock = SYSTEM_CLOCK
) -> str:
    """Create (once) a company with an iOS, an Android and a Web app wired to the simulators,
    each with one opted-in device of custom id `demo-user`; give it a day of history before
    today (the daily exports' walkthrough exports yesterday); write `var/demo.env` for a shell;
    return what `make run` prints: every key, and how to use them."""
    demo_file = settings.var_dir / "demo.json"
    if not demo_file.exists():
        demo = await _create_demo(settings, sim_url)
        _write_private(demo_file, json.dumps(demo, indent=2))
    demo = json.loads(demo_file.read_text())
    await _ensure_yesterday(settings, demo, clock())
    env_file = settings.var_dir / "demo.env"
    _write_private(env_file, demo_env(demo))
    apps_lines = [
        f"{PLATFORM_NAMES[platform]:<16} id {app['app_id']}   Live key {app['api_key']}   "
        f"Dev key {app['dev_api_key']}\n{'':<16} {_DEVICE_LABELS[platform]} {app['token']}"
        for platform, app in demo["apps"].items()
    ]
    return "\n".join(
        [
            "",
            f"Clarion API      {api_url}   (OpenAPI: {api_url}/docs)",
            f"Dashboard        {api_url}/dashboard/   {_dashboard_login(demo)}",
            f"Simulators       {sim_url}   (APNs, FCM, Web Push; CA {settings.provider_ca_file})",
            f"Web SDK demo     {api_url}/demo/   (the demo web app in your browser)",
            f"REST API key     {demo['rest_api_key']}   (the demo company's, for all three apps)",
            *apps_lines,
            f"Demo keys        {demo_file} (JSON), {env_file} (shell: {ENV_NAMES})",
            "",
            "In another terminal, in this folder, load the keys and send the demo user a push",
            "(the README's commands work as pasted once var/demo.env is loaded):",
            f"  . {env_file}",
            f"  curl -s -X POST {api_url}/1.1/$IOS_API_KEY/transactional/send \\",
            "    -H \"X-Authorization: $REST_API_KEY\" -H 'Content-Type: application/json' \\",
            '    -d \'{"group_id":"welcome","recipients":{"custom_ids":["demo-user"]},'
            '"message":{"title":"Hello","body":"From Clarion"}}\'',
            f"  curl -s --cacert {settings.provider_ca_file} "
            f"{sim_url}/_sim/apns/tokens/$IOS_DEVICE_TOKEN",
            "",
        ]
    )


PLATFORM_NAMES = {"ios": "iOS app", "android": "Android app", "web": "Web app"}
_DEVICE_LABELS = {
    "ios": "device token",
    "android": "device token",
    "web": "push endpoint",
}
# What `var/demo.env` exports, per app (`IOS_API_KEY`, ...): no CLARION_ prefix, so that
# loading it never changes the settings of a `clarion` command run in the same shell.
_ENV_FIELDS = {
    "APP_ID": "app_id",
    "API_KEY": "api_key",
    "DEV_API_KEY": "dev_api_key",
    "DEVICE_TOKEN": "token",
}
ENV_NAMES = "$REST_API_KEY, $IOS_API_KEY, $ANDROID_API_KEY, $WEB_API_KEY, ..."


def demo_env(demo: dict[str, Any]) -> str:
    """The demo's keys as shell `export` lines: `. var/demo.env` in another terminal makes the
    README's commands work as pasted (`$REST_API_KEY`, `$IOS_API_KEY`, `$IOS_DEVICE_TOKEN`...;
    the web app's DEVICE_TOKEN is its Web Push endpoint)."""
    lines = [
        "# The demo's keys, written by `clarion dev` (make run) at each start: `. var/demo.env`",
        f"export REST_API_KEY={shlex.quote(demo['rest_api_key'])}",
    ]
    for platform, app in demo["apps"].items():
        for name, field in _ENV_FIELDS.items():
            lines.append(f"export {platform.upper()}_{name}={shlex.quote(str(app[field]))}")
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds the demo's API keys)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


async def _ensure_yesterday(settings: Settings, demo: dict[str, Any], now: datetime) -> None:
    """Give the demo user a push sent and opened yesterday (UTC) on each app, unless the demo
    apps already logged a push event that day.

    Batch's daily exports, which Clarion's follow, produce a file per ended UTC day, never the
    day in progress (a file made mid-day would be the day's file for good). A demo made today
    has only today's events, so the README's walkthrough would export a header alone: at each
    start, the demo gets a day of history before it instead. An installation removed since
    (a GDPR removal, say) gets none."""
    day_start = datetime.combine(now.astimezone(UTC).date(), dt_time(0), tzinfo=UTC) - DAY
    sent_at = day_start + timedelta(hours=9)
    app_ids = {platform: app["app_id"] for platform, app in demo["apps"].items()}
    engine = create_engine(settings.resolved_database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            logged = await session.scalar(
                select(PushEvent.id)
                .where(
                    PushEvent.app_id.in_(app_ids.values()),
                    PushEvent.occurred_at >= day_start,
                    PushEvent.occurred_at < day_start + DAY,
                )
                .limit(1)
            )
            if logged is not None:
                return
            installations = await session.scalars(
                select(Installation).where(
                    tuple_(Installation.app_id, Installation.install_id).in_(
                        [(app_id, f"demo-{platform}-1") for platform, app_id in app_ids.items()]
                    )
                )
            )
            platforms = {app_id: platform for platform, app_id in app_ids.items()}
            rows = [
                push_event_row(
                    app_id=installation.app_id,
                    kind=kind,
                    occurred_at=sent_at + timedelta(minutes=minutes),
                    platform=platforms[installation.app_id],
                    install_id=installation.install_id,
                    custom_id=installation.custom_id,
                    push_token=installation.push_token,
                    group_id=DEMO_HISTORY_GROUP,
                )
                for installation in installations
                for kind, minutes in ((PushEventKind.SENT, 0), (PushEventKind.OPENED, 5))
            ]
            await record_push_events(session, rows)
    finally:
        await engine.dispose()


def _dashboard_login(demo: dict[str, Any]) -> str:
    account = demo.get("dashboard")
    if account is None:  # a demo made before the dashboard existed
        return "(create an account: clarion users create --email you@example.com)"
    return f"sign in as {account['email']} / {account['password']}"


async def _create_demo(settings: Settings, sim_url: str) -> dict[str, Any]:
    ca = settings.provider_ca_file or True
    runtime = Runtime(settings)
    demo: dict[str, Any] = {"apps": {}}
    try:
        async with (
            httpx.AsyncClient(base_url=sim_url, verify=ca) as control,
            transaction(runtime.sessions) as session,
        ):
            company, demo["rest_api_key"] = await apps.create_company(session, name="Demo")
            # The demo's dashboard admin; the password is random, kept in demo.json (0600).
            demo["dashboard"] = {"email": DEMO_ADMIN, "password": secrets.token_urlsafe(12)}
            await dashboard.create_user(
                session,
                company_id=company.id,
                user_in=UserCreate.model_validate({**demo["dashboard"], "role": "admin"}),
                now=utcnow(),
            )
            for platform in ("ios", "android", "web"):
                app, keys = await apps.create_app(
                    session,
                    company_id=company.id,
                    app_in=AppCreate(name=f"Demo {platform}", platform=platform),
                    box=runtime.box,
                )
                token, keys_web = await _wire_to_simulator(control, app, runtime)
                session.add(
                    Installation(
                        app_id=app.id,
                        install_id=f"demo-{platform}-1",
                        custom_id=DEMO_CUSTOM_ID,
                        push_token=token,
                        webpush_p256dh=keys_web.get("p256dh"),
                        webpush_auth=keys_web.get("auth"),
                        push_optin=True,
                        optin_changed_at=utcnow(),
                        language="en",
                    )
                )
                demo["apps"][platform] = {"app_id": app.id, **keys.model_dump(), "token": token}
                if platform == "web":
                    await _create_welcome_inapp(session, app)
    finally:
        await runtime.engine.dispose()
    return demo


async def _create_welcome_inapp(session: AsyncSession, app: App) -> None:
    """A live in-app campaign of the demo web app, shown once per browser at its first
    session: the demo page's first visit shows a message."""
    body = inapp.validate_body(
        {
            "name": "Welcome to Clarion",
            "live": True,
            "trigger": {"when": "NEXT_SESSION", "capping": 1},
            "landing": {
                "contents": [
                    {
                        "header": "Clarion demo",
                        "title": "Welcome to Clarion",
                        "body": "An in-app message of the demo web app, drawn by the Web SDK.",
                        "actions": [{"label": "Got it", "action": "dismiss"}],
                    }
                ]
            },
        }
    )
    await inapp.create_campaign(session, access=live_access(app), body=body, now=utcnow())


def demo_web_key(settings: Settings) -> str:
    """The demo web app's Live key, from the demo file `provision_demo` wrote."""
    demo = json.loads((settings.var_dir / "demo.json").read_text())
    key: str = demo["apps"]["web"]["api_key"]
    return key


async def _wire_to_simulator(
    control: httpx.AsyncClient, app: App, runtime: Runtime
) -> tuple[str, dict[str, str]]:
    """Give the app credentials issued by the simulator; return a device token for it."""
    if app.platform == "ios":
        key = (await control.post("/_sim/apns/keys", json={"topics": [DEMO_TOPIC]})).json()
        apps.set_apns_credentials(app, apns_credentials_from_sim(key, DEMO_TOPIC), runtime.box)
        return secrets.token_hex(32), {}
    if app.platform == "android":
        account = (await control.post("/_sim/fcm/service-accounts", json={})).json()
        apps.set_fcm_credentials(app, FcmCredentialsIn(service_account=account), runtime.box)
        return "fcm-" + secrets.token_urlsafe(48), {}
    subscription = (
        await control.post(
            "/_sim/webpush/subscriptions",
            json={"application_server_key": app.vapid_public_key},
        )
    ).json()
    return subscription["endpoint"], subscription["keys"]


def apns_credentials_from_sim(key: dict[str, str], topic: str) -> ApnsCredentialsIn:
    """Credentials for a key the APNs simulator issued (`POST /_sim/apns/keys`)."""
    return ApnsCredentialsIn(
        key_id=key["key_id"],
        team_id=key["team_id"],
        private_key=key["private_key_pem"],
        topic=topic,
    )


def simulated_token(platform: str) -> str:
    return secrets.token_hex(32) if platform == "ios" else "fcm-" + secrets.token_urlsafe(48)


async def seed_installations(
    sessions: async_sessionmaker[AsyncSession],
    *,
    app_id: int,
    count: int,
    custom_id_prefix: str = "user",
    chunk: int = 5000,
    on_progress: Callable[[int], object] = lambda _: None,
) -> None:
    """Insert `count` opted-in installations in bulk, `chunk` rows per statement."""
    async with sessions() as session:
        app = await session.get(App, app_id)
        if app is None:
            raise ValueError(f"no app {app_id}")
        if app.platform == "web":
            raise ValueError("web installations need real subscriptions; seed ios or android")
        platform = app.platform
    run = secrets.token_hex(4)
    now = utcnow()
    for start in range(0, count, chunk):
        rows = [
            {
                "app_id": app_id,
                "install_id": f"seed-{run}-{n}",
                "is_dev": False,
                "push_token": simulated_token(platform),
                "custom_id": f"{custom_id_prefix}-{n}",
                "push_optin": True,
                "optin_changed_at": now,
                "language": "en",
                "created_at": now,
                "last_seen_at": now,
            }
            for n in range(start, min(start + chunk, count))
        ]
        async with transaction(sessions) as session:
            await session.execute(insert(Installation), rows)
            # Audiences that list these custom ids already now hold the installations.
            seeded = select(Installation.id).where(
                Installation.app_id == app_id,
                Installation.install_id.in_([row["install_id"] for row in rows]),
            )
            await installations_changed(session, app_id=app_id, installations=seeded)
        on_progress(len(rows))


__all__ = ["demo_web_key", "provision_demo", "seed_installations", "wait_for_port"]
