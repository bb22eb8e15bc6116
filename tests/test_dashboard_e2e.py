"""The dashboard end to end, in a real headless Chromium driven by Playwright, against a real
`clarion serve` (SQLite, in-process workers) wired to the real simulators.

Chromium is Debian's (/usr/bin/chromium, installed by .ci/run): browsers cannot be downloaded
here. Screenshots of the main pages go to CLARION_SCREENSHOT_DIR when it is set (the README's
come from `CLARION_SCREENSHOT_DIR=docs/screenshots pytest tests/test_dashboard_e2e.py`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from clarion.demo import wait_for_port
from tests.support.simulator import REPO_ROOT, SimulatorHandle, free_port, stop_process_group

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium package is not installed (see .ci/run)"
)
# Chromium's own background traffic is refused by this machine's closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOPIC = "com.example.dashboard"
ADMIN = ("admin@example.com", "an admin's long passphrase")
VIEWER = ("viewer@example.com", "a viewer's long passphrase")


@dataclass(frozen=True)
class Server:
    url: str
    env: dict[str, str]


def _clarion(env: dict[str, str], *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clarion.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def server(sim: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    var_dir = tmp_path_factory.mktemp("dashboard-var")
    env = {
        **os.environ,
        "CLARION_VAR_DIR": str(var_dir),
        "CLARION_DATABASE_URL": "",
        "CLARION_SECRET_KEY": Fernet.generate_key().decode(),
        "CLARION_APNS_PRODUCTION_URL": sim.base_url,
        "CLARION_APNS_SANDBOX_URL": sim.base_url,
        "CLARION_FCM_URL": sim.base_url,
        "CLARION_PROVIDER_CA_FILE": str(sim.ca_file),
        "CLARION_SCHEDULER_INTERVAL_SECONDS": "0.5",
    }
    _clarion(env, "users", "create", "--email", ADMIN[0], "--password-stdin", stdin=ADMIN[1])
    _clarion(
        env,
        "users",
        "create",
        "--email",
        VIEWER[0],
        "--role",
        "viewer",
        "--password-stdin",
        stdin=VIEWER[1],
    )
    port = free_port()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "clarion.cli", "serve", "--port", str(port)],
            env=env,
            cwd=REPO_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port("127.0.0.1", port, timeout=30)
            yield Server(f"http://127.0.0.1:{port}", env)
        finally:
            stop_process_group(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _shot(page: Page, name: str) -> None:
    folder = os.environ.get("CLARION_SCREENSHOT_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _sign_in(browser: Browser, server: Server, who: tuple[str, str]) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{server.url}/dashboard/")
    expect(page).to_have_url(re.compile(r"/dashboard/login"))
    page.get_by_label("E-mail").fill(who[0])
    page.get_by_label("Password").fill(who[1])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.url}/dashboard/")
    return page


def test_wrong_password_is_refused(browser: Browser, server: Server) -> None:
    page = browser.new_page()
    page.goto(f"{server.url}/dashboard/login")
    page.get_by_label("E-mail").fill(ADMIN[0])
    page.get_by_label("Password").fill("not the passphrase")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong e-mail or password.")
    page.goto(f"{server.url}/dashboard/")
    expect(page).to_have_url(re.compile(r"/dashboard/login"))
    page.close()


def test_an_admin_creates_an_app_composes_a_campaign_and_watches_it_send(
    browser: Browser, server: Server, sim_control: httpx.Client
) -> None:
    page = _sign_in(browser, server, ADMIN)

    # An app; its keys appear once.
    page.get_by_label("Name").fill("Shop iOS")
    page.get_by_label("Platform").select_option("ios")
    page.get_by_role("button", name="Create app").click()
    live_key = page.locator("#live-key").inner_text().strip()
    assert re.fullmatch(r"[0-9A-F]{32}", live_key)
    app_id = re.search(r"app (\d+)", page.locator("h1").inner_text()).group(1)  # type: ignore[union-attr]
    base = f"{server.url}/dashboard/apps/{app_id}"

    # APNs credentials: a key the simulator issued, which it will verify on every push.
    key = sim_control.post("/_sim/apns/keys", json={"topics": [TOPIC]}).json()
    page.get_by_label("Key ID").fill(key["key_id"])
    page.get_by_label("Team ID").fill(key["team_id"])
    page.get_by_label("Bundle ID (topic)").fill(TOPIC)
    page.get_by_label(".p8 key (PEM)").fill(key["private_key_pem"])
    page.get_by_role("button", name="Save credentials").click()
    expect(page.get_by_role("status")).to_have_text("Credentials saved.")
    _shot(page, "settings")

    # Three opted-in devices through the SDK API: two French, one English.
    tokens = {}
    with httpx.Client(base_url=server.url) as sdk:
        for number, language in enumerate(["fr", "fr", "en"]):
            tokens[number] = secrets.token_hex(32)
            response = sdk.put(
                f"/sdk/v1/{live_key}/installations/install-{number}",
                json={
                    "push_token": tokens[number],
                    "push_optin": True,
                    "language": language,
                    "custom_id": f"user-{number}",
                },
            )
            assert response.status_code in (200, 201), response.text

    # The credentials test shows the provider's answer, good or bad.
    page.get_by_label("Install ID").fill("install-2")
    page.get_by_role("button", name="Send the test push").click()
    expect(page.locator("#test-result")).to_contain_text("delivered")
    page.get_by_label("or push token").fill("0badc0de")
    page.get_by_role("button", name="Send the test push").click()
    expect(page.locator("#test-result")).to_contain_text("BadDeviceToken")

    # Compose: the estimate follows the query as it is typed.
    page.goto(f"{base}/campaigns/new")
    estimate = page.locator("#estimate strong")
    expect(estimate).to_have_text("3")
    page.get_by_label("Field").fill("b.language")
    page.get_by_label("Value").fill("fr")
    expect(estimate).to_have_text("2")
    page.get_by_label("Name").fill("Winter sale")
    page.get_by_label("Title").fill("Winter sale")
    page.get_by_label("Message", exact=True).fill("Up to 50 % off, today only")
    expect(page.locator(".preview.android [data-preview=body]")).to_have_text(
        "Up to 50 % off, today only"
    )
    _shot(page, "campaign-editor")
    page.get_by_role("button", name="Save and go live").click()
    expect(page.get_by_role("status")).to_have_text("Campaign saved and live.")
    token = page.locator("#campaign-token").inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", token)

    # The statistics page polls the progress while the campaign sends.
    page.get_by_role("link", name="Statistics").click()
    expect(page.locator("[data-figure=sent]")).to_have_text("2", timeout=30_000)
    page.reload()
    expect(page.locator(".figure", has_text="sent").first).to_contain_text("2")
    _shot(page, "campaign-stats")
    received = {
        number: sim_control.get(f"/_sim/apns/tokens/{tokens[number]}").json()["messages"]
        for number in tokens
    }
    # The English device got the credentials test only.
    assert [len(received[number]) for number in (0, 1, 2)] == [1, 1, 1]
    assert received[2][0]["payload"]["aps"]["alert"]["title"] == "Clarion test"
    alert = received[0][0]["payload"]["aps"]["alert"]
    assert alert == {"title": "Winter sale", "body": "Up to 50 % off, today only"}

    # A one-column CSV audience, uploaded with the page's drop zone; a bad line is shown.
    page.goto(f"{base}/audiences")
    page.get_by_label("Audience name").fill("newsletter")
    page.locator("#upload-file").set_input_files(
        files=[
            {
                "name": "newsletter.csv",
                "mimeType": "text/csv",
                "buffer": b"user-0\nuser-1\nnot valid\nuser-1\n",
            }
        ]
    )
    page.get_by_role("button", name="Upload").click()
    result = page.locator("#upload-result")
    expect(result).to_contain_text("now holds 2 ids")
    expect(result.locator("tbody tr")).to_have_text(re.compile(r"3\s*not a valid custom id"))
    _shot(page, "audiences")
    page.reload()
    expect(page.locator("tr", has_text="newsletter")).to_contain_text("2")

    # Support looks the user up: installs, audiences, the pushes received.
    page.goto(f"{base}/people?q=user-0&by=custom_id")
    expect(page.locator("main")).to_contain_text("install-0")
    expect(page.locator("main")).to_contain_text("newsletter")
    expect(page.locator("tr", has_text=f"campaign {token}")).to_contain_text("sent")
    _shot(page, "user-lookup")

    # The list shows it, live and from the dashboard.
    page.goto(f"{base}/campaigns")
    row = page.locator("tr", has_text="Winter sale")
    expect(row).to_contain_text("dashboard")
    _shot(page, "campaigns")

    # Readable on a phone: the pages reflow rather than scroll sideways (tables scroll alone).
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("campaigns", f"campaigns/{token}", f"campaigns/{token}/stats", "audiences"):
        page.goto(f"{base}/{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px too wide on a phone"
    _shot(page, "campaign-stats-phone")

    # A session that ends while a page is open: the upload leads to the sign-in page.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{base}/audiences")
    page.context.clear_cookies()
    page.get_by_label("Audience name").fill("late")
    page.locator("#upload-file").set_input_files(
        files=[{"name": "late.csv", "mimeType": "text/csv", "buffer": b"user-0\n"}]
    )
    page.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(re.compile(r"/dashboard/login"))


def test_a_viewer_cannot_change_anything(
    browser: Browser, server: Server, sim_control: httpx.Client
) -> None:
    created = json.loads(
        _clarion(server.env, "apps", "create", "--name", "Viewer check", "--platform", "android")
    )
    base = f"{server.url}/dashboard/apps/{created['id']}"
    page = _sign_in(browser, server, VIEWER)

    page.goto(f"{base}/campaigns/new")
    expect(page.get_by_label("Name")).to_be_disabled()
    expect(page.get_by_role("button", name="Save and go live")).to_have_count(0)
    page.goto(f"{base}/settings")
    expect(page.get_by_text("Only admins see and rotate API keys.")).to_be_visible()
    expect(page.get_by_role("button", name="Save credentials")).to_have_count(0)
    expect(page.get_by_role("link", name="Team")).to_have_count(0)

    # The server refuses what the page does not offer, even with the session's CSRF token.
    answer = page.evaluate(
        """async (url) => {
            const response = await fetch(url, {
                method: "POST",
                headers: {"X-CSRF-Token": document.body.dataset.csrf,
                          "Content-Type": "application/x-www-form-urlencoded"},
                body: "name=Sneaky&action=live&message_body=hello",
            });
            return [response.status, await response.text()];
        }""",
        f"{base}/campaigns",
    )
    assert answer[0] == 403
    assert "cannot change anything" in answer[1]
    page.goto(f"{base}/campaigns")
    expect(page.get_by_text("No campaign")).to_be_visible()
    page.goto(f"{server.url}/dashboard/team")
    expect(page.get_by_role("alert")).to_contain_text("only an admin")
    page.close()


def test_create_app_posts_once_while_the_answer_is_awaited(
    browser: Browser, server: Server
) -> None:
    page = _sign_in(browser, server, ADMIN)
    # The form's POST is held until both clicks are done: a slow answer, as a user clicks again.
    held: list[Route] = []
    page.route("**/dashboard/apps", lambda route: held.append(route))
    page.get_by_label("Name").fill("Clicked twice")
    page.get_by_label("Platform").select_option("android")
    button = page.get_by_role("button", name="Create app")
    button.click(no_wait_after=True)
    page.wait_for_timeout(300)
    page.keyboard.press("Enter")  # the button keeps the focus: pressing it again
    page.wait_for_timeout(300)
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator("#live-key")).to_be_visible()
    page.goto(f"{server.url}/dashboard/")
    expect(page.get_by_role("cell", name="Clicked twice", exact=True)).to_have_count(1)
    page.close()


RENDERER = REPO_ROOT / "clarion" / "dashboard" / "static" / "inapp-render.js"


def _inapp_app(server: Server, name: str, languages: list[str]) -> str:
    """An Android app with one installation per language; the dashboard's path of the app."""
    created = json.loads(
        _clarion(server.env, "apps", "create", "--name", name, "--platform", "android")
    )
    with httpx.Client(base_url=server.url) as sdk:
        for number, language in enumerate(languages):
            response = sdk.put(
                f"/sdk/v1/{created['api_key']}/installations/inapp-{number}",
                json={"language": language},
            )
            assert response.status_code in (200, 201), response.text
    return f"{server.url}/dashboard/apps/{created['id']}"


def test_an_inapp_campaign_is_composed_listed_and_its_statistics_shown(
    browser: Browser, server: Server
) -> None:
    base = _inapp_app(server, "In-app compose", ["fr", "fr", "en"])
    page = _sign_in(browser, server, ADMIN)
    page.goto(f"{base}/inapp")
    expect(page.get_by_text("No in-app campaign")).to_be_visible()
    page.get_by_role("link", name="New in-app campaign").click()

    # The estimate counts installations, push or not.
    page.get_by_label("Field").fill("b.language")
    page.get_by_label("Value").fill("fr")
    expect(page.locator("#estimate strong")).to_have_text("2")
    page.get_by_label("Name", exact=True).fill("Welcome")
    page.get_by_label("Title").fill("Bienvenue")
    page.get_by_label("Button 1").fill("Voir")
    page.get_by_label("Does").first.select_option("deeplink")
    page.get_by_label("Link", exact=True).first.fill("myapp://offers/42")
    page.get_by_label("Show it").select_option("EVENT")
    page.get_by_label("Event (with “after an event”)").fill("e.purchase")
    # A refused field: named beside the form, which keeps what was typed.
    page.get_by_label("Image URL (https)").fill("http://cdn.example.com/a.png")
    page.get_by_role("button", name="Create campaign").click()
    expect(page.get_by_role("alert")).to_contain_text("landing.image")
    expect(page.get_by_label("Image URL (https)")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Image URL (https)")).to_be_focused()
    expect(page.get_by_label("Title")).to_have_value("Bienvenue")
    page.get_by_label("Image URL (https)").fill("")
    page.get_by_label("Live").check()
    page.get_by_role("button", name="Create campaign").click()
    expect(page.get_by_role("status")).to_have_text("In-app campaign created.")
    token = page.locator("#campaign-token").inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    _shot(page, "inapp-editor")

    page.goto(f"{base}/inapp")
    row = page.locator("tr", has_text="Welcome")
    expect(row).to_contain_text("live")
    expect(row).to_contain_text("e.purchase")
    row.get_by_role("link", name="Statistics").click()
    expect(page.locator("[data-figure=shown] b")).to_have_text("0")
    expect(page.get_by_text("Not supplied to any installation yet.")).to_be_visible()
    _shot(page, "inapp-stats")

    # Readable on a phone: the pages reflow rather than scroll sideways (tables scroll alone).
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("inapp", "inapp/new", f"inapp/{token}", f"inapp/{token}/stats", "inapp-themes"):
        page.goto(f"{base}/{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px too wide on a phone"
    page.close()


@pytest.mark.skipif(
    not RENDERER.exists(), reason="the SDK's renderer (inapp-render.js) is not built"
)
def test_the_inapp_preview_is_drawn_by_the_sdks_renderer_as_one_types(
    browser: Browser, server: Server
) -> None:
    base = _inapp_app(server, "In-app preview", ["en"])
    page = _sign_in(browser, server, ADMIN)
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: problems.append(str(error)))

    # A theme, previewed as it is edited.
    page.goto(f"{base}/inapp-themes/new")
    stage = page.locator("#inapp-preview")
    expect(stage.get_by_text("A title")).to_be_visible()
    page.get_by_label("Code (what campaigns name)").fill("night")
    page.get_by_label("Name", exact=True).fill("Night banner")
    page.get_by_label("Layout").select_option("banner_bottom")
    expect(stage.locator(".root.banner_bottom")).to_have_count(1)
    _shot(page, "inapp-theme")
    page.get_by_role("button", name="Save theme").click()
    expect(page.get_by_role("status")).to_have_text("Theme saved.")

    # The campaign's preview follows the title as it is typed, in the language chosen.
    page.goto(f"{base}/inapp/new")
    expect(stage.get_by_role("dialog")).to_be_visible()
    page.get_by_label("Title").fill("Bienvenue")
    expect(stage.get_by_role("dialog")).to_contain_text("Bienvenue")
    page.get_by_label("Title").fill("Welcome back")
    expect(stage.get_by_role("dialog")).to_contain_text("Welcome back")
    expect(stage.get_by_role("dialog")).not_to_contain_text("Bienvenue")
    page.get_by_label("Button 1").fill("Shop now")
    expect(stage.get_by_role("button", name="Shop now")).to_be_visible()
    page.get_by_role("button", name="Add a language or version").click()
    page.get_by_label("Language").nth(1).fill("fr")
    page.get_by_label("Title").nth(1).fill("Re-bonjour")
    page.get_by_label("Message shown").select_option(label="fr")
    expect(stage.get_by_role("dialog")).to_contain_text("Re-bonjour")
    page.get_by_label("Theme").select_option("night")
    expect(stage.locator(".root.banner_bottom")).to_have_count(1)
    expect(stage.locator("clarion-inapp")).to_have_count(1)  # each drawing replaces the last
    _shot(page, "inapp-preview")
    # The renderer works under the dashboard's Content-Security-Policy.
    assert problems == []
    page.close()


def _seed_entries(
    server: Server, token: str, rows: list[tuple[str, str, str | None, int]], converted: str
) -> None:
    """Entries of an automation, written into the server's database as the automation engine
    writes them: (custom id, state, reason, minutes ago it finished); and the conversion event
    of the user `converted`, now. A pending entry is due in 2 h (the automation's delay): the
    server's dispatcher would otherwise send it (or skip it, its user having no device)."""
    now = datetime.now(UTC)
    with closing(sqlite3.connect(Path(server.env["CLARION_VAR_DIR"]) / "clarion.db")) as db:
        campaign_id, app_id = db.execute(
            "SELECT id, app_id FROM campaigns WHERE token = ?", (token,)
        ).fetchone()
        for user, state, reason, ago in rows:
            at = (now - timedelta(minutes=ago)).strftime("%Y-%m-%d %H:%M:%S.%f")
            due = (now + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S.%f")
            db.execute(
                "INSERT INTO automation_entries (app_id, campaign_id, custom_id, event,"
                " entered_at, due_at, timed, state, reason, finished_at)"
                ' VALUES (?, ?, ?, \'{"name": "ue.added_to_cart"}\', ?, ?, 1, ?, ?, ?)',
                (
                    app_id,
                    campaign_id,
                    user,
                    at,
                    due if state == "pending" else at,
                    state,
                    reason,
                    None if state == "pending" else at,
                ),
            )
        db.execute(
            "INSERT INTO tracked_events (app_id, occurred_at, custom_id, name)"
            " VALUES (?, ?, ?, 'ue.purchased')",
            (app_id, now.strftime("%Y-%m-%d %H:%M:%S.%f"), converted),
        )
        db.commit()


def test_an_automation_is_composed_listed_paused_and_its_figures_shown(
    browser: Browser, server: Server
) -> None:
    created = json.loads(
        _clarion(server.env, "apps", "create", "--name", "Automations", "--platform", "android")
    )
    base = f"{server.url}/dashboard/apps/{created['id']}"
    with httpx.Client(base_url=server.url) as sdk:
        for number, language in enumerate(["en", "en", "fr"]):
            response = sdk.put(
                f"/sdk/v1/{created['api_key']}/installations/auto-{number}",
                json={"language": language, "custom_id": f"shopper-{number}"},
            )
            assert response.status_code in (200, 201), response.text
    page = _sign_in(browser, server, ADMIN)
    page.goto(f"{base}/campaigns")
    page.get_by_role("link", name="Automations").click()
    expect(page.get_by_text("No automation")).to_be_visible()
    page.get_by_role("link", name="New automation").click()

    page.get_by_label("Name", exact=True).fill("Abandoned cart")
    page.locator("[name=trigger_event]").fill("ue.added_to_cart")
    page.get_by_role("button", name="Add an attribute condition").click()
    page.get_by_label("Attribute", exact=True).fill("category")
    page.get_by_label("Equals", exact=True).fill("shoes")
    page.get_by_label("Delay unit").select_option("hours")
    page.locator("[name=delay_value]").fill("2")
    page.get_by_role("button", name="Add a cancel event").click()
    page.get_by_label("Cancel event", exact=True).fill("ue.purchased")
    page.get_by_label("Same attribute as the trigger (optional)").fill("sku")
    page.get_by_label("Quiet from").fill("22:00")
    page.get_by_label("quiet until").fill("08:00")
    page.get_by_label("Title").fill("Still thinking about it?")
    page.get_by_label("Message", exact=True).fill("Your {{ event.attributes.sku }} is waiting")
    page.get_by_label("Field").fill("b.language")
    page.get_by_label("Value").fill("en")
    expect(page.locator("#estimate")).to_contain_text("2 match the targeting")
    page.get_by_label("Conversion event").fill("ue.purchased")
    page.get_by_label("Within (hours)").fill("48")
    _shot(page, "automation-editor")
    page.get_by_label("Delay unit").select_option("days")
    page.locator("[name=delay_value]").fill("31")  # over the 30 days a delay may be
    page.get_by_role("button", name="Save and activate").click()

    # Refused beside the delay, which has the focus; what was typed is kept.
    delay = page.locator("[name=delay_value]")
    expect(delay).to_have_attribute("aria-invalid", "true")
    expect(delay).to_be_focused()
    expect(page.locator("#refusal")).to_contain_text("trigger.delay_seconds")
    expect(page.get_by_label("Cancel event", exact=True)).to_have_value("ue.purchased")
    delay.fill("2")
    page.get_by_label("Delay unit").select_option("hours")
    page.get_by_role("button", name="Save and activate").click()
    expect(page.get_by_role("status")).to_have_text("Automation saved and active.")
    expect(page.locator("h1 .pill")).to_have_text("active")
    token = page.url.split("/automations/")[1].split("?")[0]

    # What the engine records, and a conversion of one of the users sent to.
    _seed_entries(
        server,
        token,
        [(f"shopper-{n}", "sent", None, 90 + n) for n in range(3)]
        + [
            ("shopper-7", "cancelled", "ue.purchased", 30),
            ("shopper-8", "skipped", "cap:automations", 20),
            ("shopper-9", "pending", None, 0),
        ],
        converted="shopper-1",
    )
    page.reload()
    expect(page.locator("[data-figure=sent] b")).to_have_text("3")
    expect(page.locator("[data-figure=pending] b")).to_have_text("1")
    expect(page.locator("[data-figure=conversions] b")).to_have_text("1")
    expect(page.locator("#entries tbody tr")).to_have_count(6)
    _shot(page, "automation")

    # Paused: the pending entry is cancelled, and says why.
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_contain_text("Automation paused")
    expect(page.locator("[data-figure=pending] b")).to_have_text("0")
    expect(page.locator("#entries tr", has_text="shopper-9")).to_contain_text("paused")
    page.goto(f"{base}/automations")
    row = page.locator("tr", has_text="Abandoned cart")
    expect(row).to_contain_text("paused")
    expect(row).to_contain_text("ue.added_to_cart")
    expect(row).to_contain_text("2 h")

    page.set_viewport_size({"width": 390, "height": 844})
    for path in (
        "automations",
        "automations/new",
        f"automations/{token}",
        f"automations/{token}/edit",
    ):
        page.goto(f"{base}/{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px too wide on a phone"
    page.close()
