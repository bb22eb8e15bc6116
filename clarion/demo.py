"""Demo and benchmark data: an app per platform wired to the simulators, and bulk installations.

Used by `make run` (clarion dev) and `clarion devices seed`; never by the API.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clarion.apps import service as apps
from clarion.apps.models import App
from clarion.apps.schemas import ApnsCredentialsIn, AppCreate, FcmCredentialsIn
from clarion.apps.service import live_access
from clarion.audiences.resolved import installations_changed
from clarion.config import Settings
from clarion.dashboard import service as dashboard
from clarion.dashboard.schemas import UserCreate
from clarion.db import transaction, utcnow
from clarion.inapp import service as inapp
from clarion.runtime import Runtime
from clarion.sdk.models import Installation

DEMO_TOPIC = "com.example.clarion-demo"
DEMO_CUSTOM_ID = "demo-user"
DEMO_ADMIN = "admin@clarion.demo"


def wait_for_port(host: str, port: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing answered on {host}:{port} within {timeout} s")


async def provision_demo(settings: Settings, *, sim_url: str, api_url: str) -> str:
    """Create (once) a company with an iOS, an Android and a Web app wired to the simulators,
    each with one opted-in device of custom id `demo-user`; return how to use them."""
    demo_file = settings.var_dir / "demo.json"
    if not demo_file.exists():
        demo = await _create_demo(settings, sim_url)
        demo_file.write_text(json.dumps(demo, indent=2))
        demo_file.chmod(0o600)  # it holds the demo's API keys
    demo = json.loads(demo_file.read_text())
    ios = demo["apps"]["ios"]
    return "\n".join(
        [
            "",
            f"Clarion API      {api_url}   (OpenAPI: {api_url}/docs)",
            f"Dashboard        {api_url}/dashboard/   {_dashboard_login(demo)}",
            f"Simulators       {sim_url}   (APNs, FCM, Web Push; CA {settings.provider_ca_file})",
            f"Web SDK demo     {api_url}/demo/   (the demo web app in your browser)",
            f"Demo keys        {demo_file}",
            f"REST API key     {demo['rest_api_key']}",
            f"iOS app key      {ios['api_key']}   device token {ios['token']}",
            "",
            "Send a push to the demo user, then look at what the APNs simulator received:",
            f"  curl -s -X POST {api_url}/1.1/{ios['api_key']}/transactional/send \\",
            f"    -H 'X-Authorization: {demo['rest_api_key']}' \\",
            "    -H 'Content-Type: application/json' \\",
            '    -d \'{"group_id":"welcome","recipients":{"custom_ids":["demo-user"]},'
            '"message":{"title":"Hello","body":"From Clarion"}}\'',
            f"  curl -s --cacert {settings.provider_ca_file} "
            f"{sim_url}/_sim/apns/tokens/{ios['token']}",
            "",
        ]
    )


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
