"""The Web SDK's page script (websdk/src/sdk/, built into clarion/sdk/web/clarion.js) in Debian's
headless Chromium against a real `clarion serve` on SQLite, driven by Playwright.

The test page comes from the test's own HTTP server, another origin than Clarion's: the page
loads clarion.js from Clarion (`/sdk/web/v1/clarion.js`) and the SDK calls Clarion across
origins, allowed by the app's allowed-origins list (`PUT /admin/v1/apps/{id}/allowed-origins`).
The tests wait on the page's own responses and on the SDK's debug-mode console messages; only
what happens after a tab is closed is read from the database until it is there.

Also here: the unit tests of the TypeScript (`npm test`: node --test), the committed bundle is
the build of the sources, and the 20 KB gzipped budget.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    CDPSession,
    Page,
    Response,
    sync_playwright,
)

from tests.support.simulator import (
    LOCAL_SERVERS_ALLOW,
    REPO_ROOT,
    SimulatorHandle,
    free_port,
    running_simulator,
    stop_process_group,
)
from tests.support.waiting import until
from tests.test_dashboard_e2e import CHROMIUM, CHROMIUM_ARGS

BUNDLE = REPO_ROOT / "clarion" / "sdk" / "web" / "clarion.js"
WORKER_BUNDLE = REPO_ROOT / "clarion" / "sdk" / "web" / "clarion-sw.js"
WEBSDK = REPO_ROOT / "websdk"
BIN = Path(sys.executable).parent
BUDGET_GZIPPED = 20 * 1024
WORKER_BUDGET_GZIPPED = 8 * 1024
WAIT = 15.0  # seconds for something the page does at once
# The SDK retries a failed call after 1, 2, 4, 8 s...: the retry after a restart is within 16 s.
RETRY_WAIT = 40.0

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium package is not installed (see .ci/run)"
)
needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (WEBSDK / "node_modules").exists(),
    reason="node or websdk/node_modules missing (`make web` installs them)",
)

# The install snippet of docs/web-sdk.md, with the key filled in by the server.
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>shop</title>
<script>
  window.clarion = window.clarion || function () {
    (window.clarion.q = window.clarion.q || []).push(arguments);
  };
  clarion('setup', {apiKey: '%KEY%', server: '%SERVER%', debug: true,
                    serviceWorker: {url: '/clarion-sw.js'}%UI%});
</script>
<script src="%SERVER%/sdk/web/v1/clarion.js" async></script></head>
<body><button id="before">Before</button><div id="prefs"></div></body></html>"""


# The server and the site ----------------------------------------------------------------------


@dataclass
class Clarion:
    env: dict[str, str]
    port: int
    database: Path
    api_key: str
    rest_key: str
    app_id: int
    process: subprocess.Popen[bytes] | None = None
    workers: bool = False  # delivery workers in the process (the push tests send pushes)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [str(BIN / "clarion"), "serve", "--port", str(self.port)]
        command.append("--workers" if self.workers else "--no-workers")
        log = self.database.with_name("serve.log")
        # The child keeps its own copy of the file descriptor.
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not _ready(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"clarion serve did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.1)  # polling for readiness, not synchronising with a result

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
            return db.execute(sql, args).fetchall()

    def allow(self, origins: list[str]) -> None:
        response = httpx.put(
            f"{self.url}/admin/v1/apps/{self.app_id}/allowed-origins",
            headers={"X-Authorization": self.rest_key},
            json={"allowed_origins": origins},
        )
        assert response.status_code == 200, response.text

    def wait_for_rows(self, sql: str, *args: Any, count: int) -> list[tuple[Any, ...]]:
        """The rows once there are `count` of them: for what a closed tab sent, which no page
        is left to observe."""
        until(
            lambda: len(self.rows(sql, *args)) >= count, what=f"{count} rows of {sql}", timeout=WAIT
        )
        return self.rows(sql, *args)

    def rest(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/1.1/{self.api_key}",
            headers={"X-Authorization": self.rest_key},
            timeout=10.0,
        )


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/openapi.json", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class Site:
    """The test page's origin: one page, which sets the SDK up against Clarion."""

    clarion: Clarion
    port: int = 0
    ui: str = ""  # setup's `ui`, a JavaScript object literal; none when empty

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self) -> str:
        return f"{self.origin}/page.html"


class _Handler(BaseHTTPRequestHandler):
    site: Site

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        clarion = self.site.clarion
        if self.path == "/page.html":
            page = PAGE.replace("%KEY%", clarion.api_key).replace("%SERVER%", clarion.url)
            page = page.replace("%UI%", f", ui: {self.site.ui}" if self.site.ui else "")
            content_type = "text/html; charset=utf-8"
        elif self.path == "/clarion-sw.js":
            # The one line a site hosts (docs/web-sdk.md).
            page = f"importScripts('{clarion.url}/sdk/web/v1/clarion-sw.js');\n"
            content_type = "text/javascript"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        body = page.encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def clarion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clarion]:
    with _running_clarion(tmp_path_factory.mktemp("websdk"), {}, workers=False) as server:
        yield server


@contextmanager
def _running_clarion(
    var_dir: Path, extra_env: dict[str, str], *, workers: bool
) -> Iterator[Clarion]:
    """A `clarion serve` on a new SQLite database with one web app."""
    database = var_dir / "clarion.db"
    env = {
        **os.environ,
        "CLARION_VAR_DIR": str(var_dir),
        "CLARION_DATABASE_URL": f"sqlite:///{database}",
        **extra_env,
    }

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(BIN / "clarion"), *args], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("migrate")
    app = json.loads(cli("apps", "create", "--name", "shop", "--platform", "web"))
    server = Clarion(
        env, free_port(), database, app["api_key"], app["rest_api_key"], app["id"], workers=workers
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def site(clarion: Clarion) -> Iterator[Site]:
    with _serving_site(clarion) as site:
        yield site


@contextmanager
def _serving_site(clarion: Clarion) -> Iterator[Site]:
    site = Site(clarion)
    handler = type("Handler", (_Handler,), {"site": site})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    site.port = httpd.server_address[1]
    clarion.allow([site.origin])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A new browser profile: empty IndexedDB, so a new installation."""
    context = browser.new_context(locale="fr-FR", timezone_id="Europe/Paris")
    yield context
    context.close()


def _installation_id(page: Page) -> str:
    got: str = page.evaluate(
        "new Promise(resolve => clarion(api => api.getInstallationID().then(resolve)))"
    )
    return got


def _path(site: Site, install_id: str, suffix: str = "") -> str:
    return f"/sdk/v1/{site.clarion.api_key}/installations/{install_id}{suffix}"


def _sdk_call(method: str, suffix: str) -> Callable[[Response], bool]:
    """Matches the page's answered SDK call `method` to a path ending in `suffix`."""

    def matches(response: Response) -> bool:
        return (
            response.request.method == method
            and "/sdk/v1/" in response.url
            and response.url.split("?")[0].endswith(suffix)
        )

    return matches


def _sent(response: Response) -> Any:
    """The JSON body the page sent."""
    body = response.request.post_data_json
    assert body is not None, response.url
    return body


# Tests ----------------------------------------------------------------------------------------


@needs_chromium
def test_setup_registers_the_installation_and_identify_attaches_the_user(
    context: BrowserContext, site: Site
) -> None:
    page = context.new_page()
    with (
        page.expect_response(_sdk_call("PUT", "")) as registered,
        page.expect_response(_sdk_call("POST", "/app-opens")) as opened,
    ):
        page.goto(site.url())
    install_id = _installation_id(page)
    assert len(install_id) == 36, install_id
    assert install_id[14] == "4", install_id  # a v4 UUID
    assert registered.value.url == site.clarion.url + _path(site, install_id)
    assert registered.value.status == 200
    facts = _sent(registered.value)
    assert facts["language"] == "fr-FR"
    assert facts["timezone"] == "Europe/Paris"
    assert facts["device_model"].startswith("Chrome")
    assert opened.value.status == 202  # a new tab session is an app open
    # The SDK API knows the installation: its in-app messages are answered (404 for a stranger).
    with httpx.Client(base_url=site.clarion.url) as sdk:
        assert sdk.get(_path(site, install_id, "/inapp-messages")).status_code == 200

    identify = (
        "customId => new Promise((resolve, reject) => clarion(api => api.profile()"
        ".then(p => p.identify({customId})).then(resolve, reject)))"
    )
    page.evaluate(identify, "user-42")
    rows = site.clarion.rows(
        "SELECT custom_id, timezone FROM installations WHERE install_id = ?", install_id
    )
    assert rows == [("user-42", "Europe/Paris")]
    page.evaluate(identify, None)
    rows = site.clarion.rows("SELECT custom_id FROM installations WHERE install_id = ?", install_id)
    assert rows == [(None,)]

    # Another page of the same profile: the same installation.
    page.goto(site.url())
    assert _installation_id(page) == install_id


# The budget: no work of the SDK on the page's main thread longer than 5 ms at setup.
SETUP_TASK_BUDGET_MS = 5.0
# What the trace needs: the main thread's tasks (RunTask, with their CPU time `tdur`), the
# scripts they run (EvaluateScript, FunctionCall with the script's url; RunMicrotasks, the
# continuations of the SDK's async functions) and the page's navigationStart (its clock).
TRACE_CATEGORIES = [
    "disabled-by-default-devtools.timeline",
    "devtools.timeline",
    "v8.execute",
    "blink.user_timing",
]
_SCRIPTS = ("EvaluateScript", "FunctionCall", "v8.compile", "TimerFire")
# Long tasks as a site would watch them, from before anything on the page runs.
_LONG_TASKS = """
window.longTasks = [];
new PerformanceObserver(list => {
  for (const t of list.getEntries()) window.longTasks.push([t.startTime, t.duration]);
}).observe({type: 'longtask'});
"""


@dataclass
class _Task:
    start_ms: float  # on the page's clock (performance.now())
    wall_ms: float
    cpu_ms: float  # the main thread's CPU time in the task (the trace's tdur)
    sdk: bool  # it ran the SDK's code (or the page's stub of it)


def _main_thread_tasks(trace: dict[str, Any], script_url: str, page_url: str) -> list[_Task]:
    """The tasks of the renderer main thread that ran `script_url`, from a Chromium trace."""
    events = trace["traceEvents"]
    ours = {
        (e["pid"], e["tid"])
        for e in events
        if e["name"] in _SCRIPTS and (e.get("args", {}).get("data") or {}).get("url") == script_url
    }
    assert len(ours) == 1, f"{script_url} ran on {len(ours)} threads"
    thread = ours.pop()
    started = [
        e["ts"]
        for e in events
        if e["name"] == "navigationStart"
        and (e.get("args", {}).get("data") or {}).get("documentLoaderURL") == page_url
    ]
    assert len(started) == 1, started
    slices = sorted(
        (e for e in events if (e["pid"], e["tid"]) == thread and e.get("ph") == "X"),
        key=lambda e: e["ts"],
    )
    tasks = []
    for task in (e for e in slices if e["name"] == "RunTask"):
        end = task["ts"] + task["dur"]
        inside = [e for e in slices if task["ts"] <= e["ts"] <= end and e is not task]
        sdk = any(
            e["name"] == "RunMicrotasks"
            or (
                e["name"] in _SCRIPTS
                and (e.get("args", {}).get("data") or {}).get("url") in (script_url, page_url)
            )
            for e in inside
        )
        tasks.append(
            _Task(
                (task["ts"] - started[0]) / 1000,
                task["dur"] / 1000,
                task.get("tdur", task["dur"]) / 1000,
                sdk,
            )
        )
    return tasks


def _traced_setup(
    browser: Browser, site: Site, *, temporal: bool
) -> tuple[list[_Task], list[list[float]]]:
    """A first visit (a new profile) traced until setup has done its last step (the in-app
    messages considered); its main thread's tasks and the long tasks the page observed. The
    installation is registered with the browser's time zone (Temporal's, or without it the
    SDK's worker's)."""
    context = browser.new_context(timezone_id="Pacific/Auckland")
    try:
        page = context.new_page()
        page.add_init_script(_LONG_TASKS + ("" if temporal else "delete globalThis.Temporal;"))
        browser.start_tracing(page=page, categories=TRACE_CATEGORIES)
        with page.expect_console_message(lambda m: "in-app (session)" in m.text):
            page.goto(site.url())
        trace = json.loads(browser.stop_tracing())
        long_tasks: list[list[float]] = page.evaluate("window.longTasks")
        install_id = _installation_id(page)
    finally:
        context.close()
    zone = site.clarion.rows("SELECT timezone FROM installations WHERE install_id = ?", install_id)
    assert zone == [("Pacific/Auckland",)]
    script = f"{site.clarion.url}/sdk/web/v1/clarion.js"
    return _main_thread_tasks(trace, script, site.url()), long_tasks


@needs_chromium
@pytest.mark.parametrize("temporal", [True, False], ids=["temporal", "without-temporal"])
def test_setup_runs_no_task_longer_than_5_ms_on_the_main_thread(
    browser: Browser, site: Site, temporal: bool
) -> None:
    """The issue's budget, measured as CPU time: each main-thread task that runs the SDK's code
    during setup (its script's evaluation, IndexedDB and network callbacks, the continuations
    of its promises) takes at most 5 ms of the thread's CPU, as Chromium's trace counts it.
    Also checked the way a site would: no long task (>= 50 ms, the finest Chromium reports)
    that ran the SDK's code. Without Temporal (browsers before it), the SDK reads the time
    zone in a worker: Intl on the page's thread was a 13-17 ms task.

    CPU time, not wall time: on a loaded 2-core machine a task waits for a core while it runs,
    and its wall time counts the wait (a 3 ms layout took 62 ms here). CPU time does not, but a
    busy machine still inflates it somewhat (caches, frequency): the smallest of three first
    visits is taken for each measure, since noise only ever adds time and a task the SDK makes
    too long is too long in every visit."""
    runs = [_traced_setup(browser, site, temporal=temporal) for _ in range(3)]
    longest = [max(t.cpu_ms for t in tasks if t.sdk) for tasks, _ in runs]
    details = [
        [(round(t.start_ms), round(t.cpu_ms, 2)) for t in tasks if t.sdk and t.cpu_ms > 1]
        for tasks, _ in runs
    ]
    assert min(longest) <= SETUP_TASK_BUDGET_MS, details
    # Every long task the page saw was the machine's doing: none ran the SDK's code for more
    # than the budget (the trace's tasks at the same moment on the page's clock).
    for tasks, long_tasks in runs:
        for start, duration in long_tasks:
            during = [
                t
                for t in tasks
                if t.sdk and t.start_ms < start + duration and start < t.start_ms + t.wall_ms
            ]
            assert all(t.cpu_ms <= SETUP_TASK_BUDGET_MS for t in during), (start, during)


# profile().edit as docs/web-sdk.md shows it: one of each type Batch's editor infers, an explicit
# FLOAT, tags, language and region. Resolves to "edited", or to the Error's message.
EDIT = """() => new Promise(resolve => clarion(api => api.profile().then(p => p.edit(e => e
    .setAttribute('plan', 'premium')
    .setAttribute('visits', 42)
    .setAttribute('ratio', 0.25)
    .setAttribute('score', {type: api.userAttributeTypes.FLOAT, value: 3})
    .setAttribute('optin', true)
    .setAttribute('signed_up', new Date(Date.UTC(2026, 10, 23, 10, 0, 0, 250)))
    .setAttribute('home', new URL('https://shop.example/u/42'))
    .addToArray('interests', ['Sport', 'cinema'])
    .setLanguage('de-AT')
    .setRegion('at')))
  .then(() => resolve('edited'), error => resolve(error.message))))"""
# getUserAttributes() as [type, value] per name, Dates and URLs as text: what this browser's
# edits set (the SDK API answers no profile: decision 0024).
READ_ATTRIBUTES = """() => new Promise(resolve => clarion(api => api.getUserAttributes()
  .then(found => resolve(Object.fromEntries(Object.entries(found).map(([name, a]) => [name, [
    a.getType(),
    a.value instanceof Date ? 'Date ' + a.value.toISOString()
      : a.value instanceof URL ? 'URL ' + a.value.href : a.value]]))))))"""


@needs_chromium
def test_profile_edit_lands_typed_and_reads_back_once_the_user_is_identified(
    context: BrowserContext, site: Site
) -> None:
    clarion = site.clarion
    page = context.new_page()
    with page.expect_response(_sdk_call("PUT", "")):
        page.goto(site.url())
    install_id = _installation_id(page)
    profile_sql = "SELECT name, kind, text_value, number_value FROM profile_attributes"
    profile_sql += " WHERE custom_id = ? ORDER BY name"

    # Before identify: the promise rejects saying what to do, debug mode says it too, and
    # nothing of the edit is applied (not even its language).
    with page.expect_console_message(lambda m: "profile().edit refused" in m.text) as logged:
        refused = page.evaluate(EDIT)
    assert refused.startswith("clarion: profile().edit refused: API_MISUSE"), refused
    assert "identify the user first" in refused
    assert "identify the user first" in logged.value.text
    language_sql = "SELECT language, region FROM installations WHERE install_id = ?"
    assert clarion.rows(language_sql, install_id) == [("fr-FR", None)]
    assert page.evaluate(READ_ATTRIBUTES) == {}

    page.evaluate(
        "new Promise((resolve, reject) => clarion(api => api.profile()"
        ".then(p => p.identify({customId: 'shopper-9'})).then(resolve, reject)))"
    )
    with page.expect_response(_sdk_call("POST", "/profile/edits")) as sent:
        assert page.evaluate(EDIT) == "edited"
    assert sent.value.status == 200
    assert clarion.rows(profile_sql, "shopper-9") == [
        ("home", "url", "https://shop.example/u/42", None),
        ("optin", "boolean", None, 1.0),
        ("plan", "string", "premium", None),
        ("ratio", "float", None, 0.25),
        ("score", "float", None, 3.0),
        ("signed_up", "date", "2026-11-23T10:00:00.250000+00:00", 1795428000.25),
        ("visits", "integer", None, 42.0),
    ]
    tags_sql = "SELECT collection, tag FROM profile_tags WHERE custom_id = ? ORDER BY tag"
    assert clarion.rows(tags_sql, "shopper-9") == [("interests", "cinema"), ("interests", "sport")]
    assert clarion.rows(language_sql, install_id) == [("de-AT", "AT")]

    read = {
        "home": ["url", "URL https://shop.example/u/42"],
        "interests": ["array", ["cinema", "sport"]],
        "optin": ["boolean", True],
        "plan": ["string", "premium"],
        "ratio": ["float", 0.25],
        "score": ["float", 3],
        "signed_up": ["date", "Date 2026-11-23T10:00:00.250Z"],
        "visits": ["integer", 42],
    }
    assert page.evaluate(READ_ATTRIBUTES) == read

    # A bad value is refused at the call, before anything is sent; so is an email.
    for bad in ("e.setAttribute('plan', 'x'.repeat(65))", "e.setEmailAddress('a@b.example')"):
        message = page.evaluate(
            "() => new Promise(resolve => clarion(api => api.profile()"
            f".then(p => p.edit(e => {bad}))"
            ".then(() => resolve('sent'), error => resolve(error.message))))"
        )
        assert message.startswith("clarion: set"), message
    assert clarion.rows(profile_sql, "shopper-9")[2] == ("plan", "string", "premium", None)

    # The language set by the edit outlives the next page's registration (the browser says
    # fr-FR), and what the edits set is read on the next page too.
    with page.expect_response(_sdk_call("PUT", "")) as registered:
        page.reload()
    assert _sent(registered.value)["language"] == "de-AT"
    assert clarion.rows(language_sql, install_id) == [("de-AT", "AT")]
    assert page.evaluate(READ_ATTRIBUTES) == read
    # Another user signs in on this browser: the previous user's attributes are not theirs.
    page.evaluate(
        "new Promise((resolve, reject) => clarion(api => api.profile()"
        ".then(p => p.identify({customId: 'shopper-10'})).then(resolve, reject)))"
    )
    assert page.evaluate(READ_ATTRIBUTES) == {}


@needs_chromium
def test_batch_sdk_is_an_alias_and_debug_mode_explains_a_missing_key(
    context: BrowserContext, site: Site
) -> None:
    page = context.new_page()
    page.goto(site.url())
    _installation_id(page)
    assert page.evaluate("window.batchSDK === window.clarion")
    # A page written for Batch: its stub queues a setup without apiKey; the script replays it.
    page.evaluate(
        "window.batchSDK = function () { (batchSDK.q = batchSDK.q || []).push(arguments) };"
        "batchSDK('setup', {server: 'https://clarion.example', debug: true})"
    )
    with page.expect_console_message(lambda m: "apiKey" in m.text) as explained:
        page.add_script_tag(url=f"{site.clarion.url}/sdk/web/v1/clarion.js")
    assert "`apiKey` is missing" in explained.value.text


@needs_chromium
def test_an_origin_the_app_does_not_allow_is_explained_in_debug_mode(
    context: BrowserContext, site: Site
) -> None:
    site.clarion.allow(["https://shop.example"])
    page = context.new_page()
    with page.expect_console_message(lambda m: "no answer" in m.text) as explained:
        page.goto(site.url())
    assert f"{site.origin} is not in the app's allowed origins" in explained.value.text
    install_id = _installation_id(page)
    assert site.clarion.rows("SELECT 1 FROM installations WHERE install_id = ?", install_id) == []


@needs_chromium
def test_events_land_in_the_database_even_across_an_outage_a_reload_and_a_close(
    context: BrowserContext, site: Site
) -> None:
    clarion = site.clarion
    page = context.new_page()
    with page.expect_response(_sdk_call("PUT", "")):
        page.goto(site.url())
    install_id = _installation_id(page)
    names_sql = (
        "SELECT name FROM tracked_events WHERE install_id = ? AND name != '_open' ORDER BY id"
    )

    with page.expect_response(_sdk_call("POST", "/events")) as sent:
        page.evaluate(
            "clarion(api => { api.trackEvent('added_to_cart', {label: 'shoes', "
            "attributes: {price: 49.9, size: 42}, tags: ['summer']}); api.trackEvent('viewed'); })"
        )
    assert sent.value.status == 202
    batch = _sent(sent.value)["events"]
    assert [e["name"] for e in batch] == ["added_to_cart", "viewed"]  # one call
    rows = clarion.rows(
        "SELECT name, label, attributes, tags FROM tracked_events"
        " WHERE install_id = ? AND name != '_open' ORDER BY id",
        install_id,
    )
    assert [(r[0], r[1]) for r in rows] == [("added_to_cart", "shoes"), ("viewed", None)]
    assert json.loads(rows[0][2]) == {"price": 49.9, "size": 42}
    assert json.loads(rows[0][3]) == ["summer"]

    # The server goes down: the event is kept, the page reloads (IndexedDB keeps the queue),
    # the server comes back, the event arrives once.
    clarion.stop()
    try:
        with page.expect_console_message(lambda m: "events not sent" in m.text):
            page.evaluate("clarion(api => api.trackEvent('offline_event'))")
        with page.expect_response(_sdk_call("POST", "/events"), timeout=RETRY_WAIT * 1000) as sent:
            page.reload()
            _installation_id(page)
            clarion.start()
    finally:
        if clarion.process is None:
            clarion.start()
    assert sent.value.status == 202
    assert [e["name"] for e in _sent(sent.value)["events"]] == ["offline_event"]
    names = [r[0] for r in clarion.rows(names_sql, install_id)]
    assert names == ["added_to_cart", "viewed", "offline_event"]

    # Tracked right before the tab closes (within the 200 ms batching delay): pagehide sends it.
    page.evaluate("clarion(api => api.trackEvent('last_words'))")
    page.close(run_before_unload=True)
    names = [r[0] for r in clarion.wait_for_rows(names_sql, install_id, count=4)]
    assert names == ["added_to_cart", "viewed", "offline_event", "last_words"]


@needs_chromium
def test_an_inapp_campaign_is_shown_at_the_next_session_clicked_by_keyboard_and_capped(
    context: BrowserContext, site: Site
) -> None:
    body = {
        "name": "Welcome to the shop",
        "live": True,
        "trigger": {"when": "NEXT_SESSION", "capping": 1},
        "landing": {
            "contents": [
                {
                    "title": "Bienvenue",
                    "body": "Half price today",
                    "actions": [
                        {"label": "Plus tard", "action": "dismiss"},
                        {"label": "Voir", "action": "dismiss"},
                    ],
                }
            ]
        },
    }
    with site.clarion.rest() as rest:
        created = rest.post("/in-app-campaigns/create", json=body)
        assert created.status_code == 201, created.text
        token = created.json()["campaign_token"]
        try:
            _wait_until_served(site, token)
            page = context.new_page()
            with (
                page.expect_response(_sdk_call("POST", "/inapp-events")) as shown,
                page.expect_console_message(lambda m: "in-app (session)" in m.text) as decided,
            ):
                page.goto(site.url())
            assert f"showing {token}" in decided.value.text
            assert _sent(shown.value) == {"events": [{"kind": "inapp_shown", "campaign_id": token}]}
            shadow = "document.querySelector('clarion-inapp').shadowRoot"
            assert page.evaluate(f"{shadow}.activeElement.getAttribute('role')") == "dialog"
            for _ in range(3):  # the close button, "Plus tard", "Voir"
                page.keyboard.press("Tab")
            assert page.evaluate(f"{shadow}.activeElement.textContent") == "Voir"
            with page.expect_response(_sdk_call("POST", "/inapp-events")) as clicked:
                page.keyboard.press("Enter")
            assert page.evaluate("document.querySelector('clarion-inapp')") is None
            assert clicked.value.status == 202
            assert _sent(clicked.value) == {
                "events": [
                    {
                        "kind": "inapp_clicked",
                        "campaign_id": token,
                        "cta_position": 1,
                        "cta_label": "Voir",
                    }
                ]
            }
            stats = rest.get(f"/in-app-campaigns/stats/{token}").json()["detail"]
            assert [(d["shown"], d["clicked"]) for d in stats] == [(1, 1)]

            # A new tab of the same browser: a new session, but capping (1) holds it back.
            again = context.new_page()
            with again.expect_console_message(lambda m: "in-app (session)" in m.text) as decided:
                again.goto(site.url())
            assert "nothing to show" in decided.value.text
            assert again.evaluate("document.querySelector('clarion-inapp')") is None
        finally:
            # The app is the module's: other tests' new installations must not see it.
            assert rest.post(f"/in-app-campaigns/delete/{token}").status_code == 200


@needs_chromium
def test_an_event_triggered_message_runs_the_pages_action_handler_and_reports_a_close(
    context: BrowserContext, site: Site
) -> None:
    body = {
        "name": "Shoes",
        "live": True,
        "trigger": {"when": "EVENT", "event": "e.bought", "label": "shoes"},
        "landing": {
            "contents": [
                {
                    "title": "Socks to match?",
                    "actions": [
                        {
                            "label": "Show",
                            "action": "deeplink",
                            "args": {"l": "https://shop.example/socks"},
                        }
                    ],
                }
            ]
        },
        "custom_payload": json.dumps({"aisle": 7}),
    }
    with site.clarion.rest() as rest:
        created = rest.post("/in-app-campaigns/create", json=body)
        assert created.status_code == 201, created.text
        token = created.json()["campaign_token"]
        try:
            _wait_until_served(site, token)
            page = context.new_page()
            with page.expect_console_message(lambda m: "in-app (session)" in m.text) as decided:
                page.goto(site.url())
            assert "nothing to show" in decided.value.text
            page.evaluate("clarion('onInAppAction', a => { window.handled = a; return false; })")
            track = "label => clarion(api => api.trackEvent('bought', {label}))"
            with page.expect_console_message(lambda m: "in-app (event)" in m.text) as decided:
                page.evaluate(track, "hats")
            assert "nothing to show" in decided.value.text
            with (
                page.expect_response(_sdk_call("POST", "/inapp-events")) as shown,
                page.expect_console_message(lambda m: "in-app (event)" in m.text) as decided,
            ):
                page.evaluate(track, "shoes")
            assert f"showing {token}" in decided.value.text
            assert _sent(shown.value)["events"][0]["kind"] == "inapp_shown"

            # The deeplink goes to the page's handler, which keeps the page where it is.
            shadow = "document.querySelector('clarion-inapp').shadowRoot"
            page.keyboard.press("Tab")
            page.keyboard.press("Tab")
            assert page.evaluate(f"{shadow}.activeElement.textContent") == "Show"
            with page.expect_response(_sdk_call("POST", "/inapp-events")) as clicked:
                page.keyboard.press("Enter")
            assert _sent(clicked.value)["events"][0]["kind"] == "inapp_clicked"
            assert page.evaluate("window.handled") == {
                "campaignToken": token,
                "position": 0,
                "label": "Show",
                "action": "deeplink",
                "args": {"l": "https://shop.example/socks"},
                "customPayload": {"aisle": 7},
            }
            assert page.url == site.url()

            # No capping: the next matching event shows it again; Escape closes it.
            with (
                page.expect_response(_sdk_call("POST", "/inapp-events")) as shown,
                page.expect_console_message(lambda m: "in-app (event)" in m.text) as decided,
            ):
                page.evaluate(track, "shoes")
            assert f"showing {token}" in decided.value.text
            assert _sent(shown.value)["events"][0]["kind"] == "inapp_shown"
            with page.expect_response(_sdk_call("POST", "/inapp-events")) as closed:
                page.keyboard.press("Escape")
            assert _sent(closed.value) == {
                "events": [{"kind": "inapp_closed", "campaign_id": token}]
            }
            stats = rest.get(f"/in-app-campaigns/stats/{token}").json()["detail"]
            assert [(d["shown"], d["clicked"], d["closed"]) for d in stats] == [(2, 1, 1)]
        finally:
            assert rest.post(f"/in-app-campaigns/delete/{token}").status_code == 200


def _wait_until_served(site: Site, token: str) -> None:
    """Until the server hands the new campaign out: each process rereads the apps' in-app
    revisions once a second (docs/inapp.md), so one that answered before the campaign existed
    serves it within about 2 s. Asked for a probe installation of its own."""
    probe = _path(site, "probe")
    with httpx.Client(base_url=site.clarion.url, timeout=10.0) as sdk:
        assert sdk.put(probe, json={}).status_code == 200

        def served() -> bool:
            answer = sdk.get(f"{probe}/inapp-messages").json()
            return token in [m["campaign_token"] for m in answer["messages"]]

        until(served, what=f"campaign {token} handed out", timeout=WAIT)


# Web Push -------------------------------------------------------------------------------------
# Chromium cannot obtain a real push subscription here (its push service is on the internet), so
# the test goes around that one step: the installation is given a subscription the Web Push
# simulator issued, Clarion sends to the simulator, and what the simulator decrypted is handed to
# the page's service worker through the DevTools protocol (ServiceWorker.deliverPushMessage).


@dataclass
class PushSite:
    site: Site
    sim: SimulatorHandle


@pytest.fixture(scope="module")
def push_clarion(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Clarion, SimulatorHandle]]:
    """A Clarion with delivery workers whose Web Push goes to the simulator."""
    with running_simulator(tmp_path_factory.mktemp("websdk-sim")) as sim:
        env = {
            "CLARION_PROVIDER_CA_FILE": str(sim.ca_file),
            "CLARION_OUTBOUND_ALLOW": ",".join(LOCAL_SERVERS_ALLOW),
        }
        with _running_clarion(tmp_path_factory.mktemp("websdk-push"), env, workers=True) as server:
            yield server, sim


@pytest.fixture
def push_site(push_clarion: tuple[Clarion, SimulatorHandle]) -> Iterator[PushSite]:
    server, sim = push_clarion
    with _serving_site(server) as site:
        yield PushSite(site, sim)


def _registration_id(cdp: CDPSession, page: Page, scope: str) -> str:
    """The worker registration's DevTools id, from the events ServiceWorker.enable sends."""
    found: dict[str, str] = {}
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated",
        lambda event: found.update(
            {r["scopeURL"]: r["registrationId"] for r in event["registrations"]}
        ),
    )
    cdp.send("ServiceWorker.enable")
    deadline = time.monotonic() + WAIT
    while scope not in found:
        assert time.monotonic() < deadline, found
        page.evaluate("1")  # a round trip, during which Playwright delivers the events
    return found[scope]


@needs_chromium
def test_a_push_is_shown_by_the_service_worker_and_its_click_reports_the_open(
    browser: Browser, push_site: PushSite
) -> None:
    site, sim = push_site.site, push_site.sim
    clarion = site.clarion
    context = browser.new_context(permissions=["notifications"])
    try:
        page = context.new_page()
        with page.expect_response(_sdk_call("PUT", "")):
            page.goto(site.url())
        install_id = _installation_id(page)
        # Permission granted: setup registers the site's worker (scope /).
        assert (
            page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)") == site.origin + "/"
        )

        # The step around the browser's push service: a subscription from the simulator.
        with httpx.Client(base_url=clarion.url, timeout=10.0) as sdk:
            vapid = sdk.get(f"/sdk/v1/{clarion.api_key}/webpush/vapid-key").json()
            with sim.control_client() as control:
                subscription = control.post("/_sim/webpush/subscriptions", json=vapid).json()
            put = sdk.put(
                _path(site, install_id),
                json={"webpush_subscription": subscription, "push_optin": True, "custom_id": "max"},
            )
            assert put.status_code == 200, put.text
        # A campaign to every opted-in installation of the app: this page's only.
        body = {
            "name": "Sale",
            "live": True,
            "push_time": "now",
            "messages": [{"language": "en", "title": "Soldes", "body": "Half price today"}],
            "deeplink": f"{site.origin}/page.html",
            "media": {"icon": "https://cdn.example/icon.png"},
        }
        with clarion.rest() as rest:
            created = rest.post("/campaigns/create", json=body)
            assert created.status_code == 201, created.text
            campaign = created.json()["campaign_token"]
        sub_id = subscription["endpoint"].rsplit("/", 1)[1]
        with sim.control_client() as control:

            def delivered() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = control.get(f"/_sim/webpush/tokens/{sub_id}").json()[
                    "messages"
                ]
                return found

            until(lambda: bool(delivered()), what="a push at the simulator", timeout=WAIT)
            messages = delivered()
        payload = messages[-1]["payload"]
        send_token = payload["com.batch"]["i"]

        # Into the worker, as the push service would hand it over.
        cdp = context.new_cdp_session(page)
        registration = _registration_id(cdp, page, site.origin + "/")
        cdp.send(
            "ServiceWorker.deliverPushMessage",
            {"origin": site.origin, "registrationId": registration, "data": json.dumps(payload)},
        )
        notifications = (
            "navigator.serviceWorker.ready.then(r => r.getNotifications()).then(ns => ns.map(n =>"
            " ({title: n.title, body: n.body, icon: n.icon, data: n.data})))"
        )
        page.wait_for_function(f"{notifications}.then(ns => ns.length > 0)")
        [shown] = page.evaluate(notifications)
        assert shown["title"] == "Soldes"
        assert shown["body"] == "Half price today"
        assert shown["icon"] == "https://cdn.example/icon.png"
        assert shown["data"]["sendId"] == send_token
        assert shown["data"]["deeplink"] == f"{site.origin}/page.html"

        # The click: DevTools has no command to click a notification, so the worker's own
        # notificationclick listener is given a NotificationEvent built in the worker.
        [worker] = context.service_workers
        worker.evaluate(
            "self.registration.getNotifications().then(([n]) => self.dispatchEvent("
            "new NotificationEvent('notificationclick', {notification: n, action: ''})))"
        )
        rows = clarion.wait_for_rows(
            "SELECT kind, install_id FROM push_events WHERE send_token = ? AND kind = ?",
            send_token,
            "push_opened",
            count=1,
        )
        assert rows == [("push_opened", install_id)]
        with clarion.rest() as rest:
            stats = rest.get(f"/campaigns/stats/{campaign}").json()["detail"]
        assert [(d["sent"], d["direct_open"]) for d in stats] == [(1, 1)], stats
        page.wait_for_function(f"{notifications}.then(ns => ns.length === 0)")  # closed
    finally:
        context.close()


@needs_chromium
def test_subscribe_without_permission_rejects_and_reports_nothing(
    browser: Browser, site: Site
) -> None:
    context = browser.new_context()  # notifications neither granted nor asked: headless denies
    try:
        page = context.new_page()
        with page.expect_response(_sdk_call("PUT", "")):
            page.goto(site.url())
        install_id = _installation_id(page)
        error = page.evaluate(
            "new Promise(resolve => clarion(api => api.subscribe().then("
            "() => resolve('resolved'), e => resolve(String(e)))))"
        )
        assert error.startswith("Error: clarion: notification permission"), error
        assert page.evaluate(
            "new Promise(r => clarion(api => api.getSubscriptionState().then(r)))"
        ) in ("denied", "unsubscribed")
        assert (
            page.evaluate("new Promise(r => clarion(api => api.isSubscribed().then(r)))") is False
        )
        # No worker was registered and the installation has no subscription.
        assert page.evaluate("navigator.serviceWorker.getRegistrations().then(r => r.length)") == 0
        rows = site.clarion.rows(
            "SELECT webpush_auth FROM installations WHERE install_id = ?", install_id
        )
        assert rows == [(None,)]
    finally:
        context.close()


@needs_chromium
def test_unsubscribe_reports_the_opt_out_and_clear_installation_data_starts_a_new_one(
    browser: Browser, site: Site
) -> None:
    context = browser.new_context(permissions=["notifications"])
    try:
        page = context.new_page()
        with page.expect_response(_sdk_call("PUT", "")):
            page.goto(site.url())
        install_id = _installation_id(page)
        optin = "SELECT push_optin FROM installations WHERE install_id = ?"
        with httpx.Client(base_url=site.clarion.url) as sdk:
            assert sdk.put(_path(site, install_id), json={"push_optin": True}).status_code == 200
        assert site.clarion.rows(optin, install_id) == [(1,)]
        state = "new Promise(r => clarion(api => api.getSubscriptionState().then(r)))"
        # Granted, but no subscription (this browser cannot get one here: see docs/web-sdk.md).
        assert page.evaluate(state) == "unsubscribed"
        with page.expect_response(_sdk_call("PUT", "")) as reported:
            assert page.evaluate("new Promise(r => clarion(api => api.unsubscribe().then(r)))")
        assert _sent(reported.value) == {"push_optin": False}
        assert site.clarion.rows(optin, install_id) == [(0,)]

        page.evaluate("new Promise(r => clarion(api => api.clearInstallationData().then(r)))")
        with page.expect_response(_sdk_call("PUT", "")):
            page.reload()
        renewed = _installation_id(page)
        assert renewed != install_id
        assert len(site.clarion.rows(optin, renewed)) == 1
    finally:
        context.close()


# Subscription prompts (setup's `ui`) ------------------------------------------------------------
# Each prompt lives in a <clarion-ui data-ui=NAME> element's open shadow root. The tests wait on
# the SDK's debug-mode messages ("ui alert: shown", "... not shown (why)"), which it writes once
# it has decided. Headless Chromium answers a permission request it was not told about with
# "denied" (as a visitor refusing would); `grant_permissions` makes it answer "granted".

ALERT = "document.querySelector('clarion-ui[data-ui=alert]')"
FOCUSED = "document.activeElement.shadowRoot?.activeElement?.textContent ?? null"


def _ui_message(text: str) -> Callable[[Any], bool]:
    return lambda message: text in message.text


@needs_chromium
def test_no_ui_configuration_draws_nothing(context: BrowserContext, site: Site) -> None:
    page = context.new_page()
    with page.expect_console_message(_ui_message("in-app (session)")):
        page.goto(site.url())
    assert page.evaluate("document.querySelectorAll('clarion-ui').length") == 0
    assert (
        page.evaluate(
            "new Promise(r => clarion(api => r(api.ui ? api.ui.has('alert') : 'no api.ui')))"
        )
        is False
    )
    with page.expect_console_message(_ui_message("ui.show: 'alert' is not configured")):
        page.evaluate("new Promise(r => clarion(api => api.ui.show('alert').then(r)))")
    assert page.evaluate("document.querySelectorAll('clarion-ui').length") == 0


@needs_chromium
def test_the_alert_is_keyboard_operable_and_a_no_holds_it_back_across_reloads(
    context: BrowserContext, site: Site
) -> None:
    site.ui = (
        "{alert: {text: 'Stay in the loop', positiveSubBtnLabel: 'Yes please',"
        " negativeBtnLabel: 'Not now', attach: 'bottom right', hideFor: 3600,"
        " backgroundColor: 'url(x)', positiveBtnStyle: {backgroundColor: 'rebeccapurple'}},"
        " carousel: {}}"
    )
    page = context.new_page()
    with (
        page.expect_console_message(_ui_message("ui: unknown component 'carousel'")),
        page.expect_console_message(_ui_message("ui alert: shown")),
    ):
        page.goto(site.url())
    # First in the page, in its own shadow root, a labelled (non-modal) dialog.
    assert page.evaluate(f"document.body.firstElementChild === {ALERT}")
    box = f"{ALERT}.shadowRoot.querySelector('[role=dialog]')"
    assert page.evaluate(f"{box}.getAttribute('aria-labelledby')") == "t"
    assert (
        page.evaluate(f"{ALERT}.shadowRoot.getElementById('t').textContent") == "Stay in the loop"
    )
    # Colours the browser does not take as colours are left out; the others are set.
    assert page.evaluate(f"{box}.style.getPropertyValue('--bg')") == "#fff"
    assert page.evaluate(f"{box}.style.getPropertyValue('--yes-bg')") == "rebeccapurple"
    # The page's CSS cannot hide it.
    page.add_style_tag(content="clarion-ui, div, p, button {display: none !important}")
    assert page.evaluate(f"{ALERT}.getBoundingClientRect().height") > 0
    assert page.evaluate(f"{box}.getBoundingClientRect().height") > 0
    # Not taking the focus, but the first Tab stop: "Not now", then "Yes please".
    assert page.evaluate("document.activeElement === document.body")
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED) == "Not now"
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED) == "Yes please"
    page.keyboard.press("Shift+Tab")
    with page.expect_console_message(_ui_message("ui alert: refused")):
        page.keyboard.press("Enter")
    assert page.evaluate(ALERT) is None

    # The "no" is kept (IndexedDB): the next page does not show it.
    with page.expect_console_message(_ui_message("ui alert: not shown")) as held:
        page.reload()
    assert re.search(r"\(refused \d+ s ago \(hideFor 3600 s\)\)", held.value.text), held.value.text
    assert page.evaluate(ALERT) is None

    # api.ui.show with force passes over it; Escape inside is a "no" too.
    page.evaluate("clarion(api => api.ui.show('alert', true))")
    page.wait_for_function(ALERT)
    page.keyboard.press("Tab")
    with page.expect_console_message(_ui_message("ui alert: refused")):
        page.keyboard.press("Escape")
    assert page.evaluate(ALERT) is None
    # reset() forgets it: the next page shows it again.
    page.evaluate(
        "new Promise(r => clarion(api => api.ui.waitUntilDrawn('alert')"
        ".then(c => c.reset()).then(r)))"
    )
    with page.expect_console_message(_ui_message("ui alert: shown")):
        page.reload()


@needs_chromium
def test_the_alerts_yes_asks_the_permission_and_subscribes(browser: Browser, site: Site) -> None:
    site.ui = "{alert: {positiveSubBtnLabel: 'Yes please'}}"
    context = browser.new_context()
    try:
        # The visitor refuses in the browser's prompt (headless answers "denied"): the alert
        # goes, and no page shows it again, since nothing can be asked any more.
        page = context.new_page()
        with page.expect_console_message(_ui_message("ui alert: shown")):
            page.goto(site.url())
        assert page.evaluate("Notification.permission") == "default"
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        assert page.evaluate(FOCUSED) == "Yes please"
        with page.expect_console_message(_ui_message("notification permission denied")):
            page.keyboard.press("Enter")
        page.wait_for_function(f"{ALERT} === null")
        assert page.evaluate("Notification.permission") == "denied"
        with page.expect_console_message(_ui_message("ui alert: not shown")) as held:
            page.reload()
        assert "notifications are blocked in this browser" in held.value.text
    finally:
        context.close()

    context = browser.new_context()
    try:
        # The visitor allows: subscribe() goes on, registers the worker and asks Clarion for the
        # app's VAPID key, then the browser's push service, which this Chromium cannot reach
        # (see "How the tests go around the push service"): the alert stays for another try.
        page = context.new_page()
        with page.expect_console_message(_ui_message("ui alert: shown")):
            page.goto(site.url())
        context.grant_permissions(["notifications"], origin=site.origin)
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        with (
            page.expect_response(lambda r: r.url.endswith("/webpush/vapid-key")) as vapid,
            page.expect_console_message(_ui_message("ui: subscribe failed")),
        ):
            page.keyboard.press("Enter")
        assert vapid.value.status == 200
        assert (
            page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)") == site.origin + "/"
        )
        assert (
            page.evaluate(f"{ALERT}.shadowRoot.querySelector('.yes').hasAttribute('aria-busy')")
            is False
        )
    finally:
        context.close()


@needs_chromium
def test_the_banner_pushes_the_page_down_and_its_close_button_is_a_no(
    context: BrowserContext, site: Site
) -> None:
    site.ui = "{banner: {text: 'Deals first', btnSub: 'Go', autoShow: false}}"
    banner = "document.querySelector('clarion-ui[data-ui=banner]')"
    page = context.new_page()
    with page.expect_console_message(_ui_message("ui banner: not shown")) as held:
        page.goto(site.url())
    assert "autoShow is false" in held.value.text
    top = page.evaluate("document.getElementById('before').getBoundingClientRect().top")
    with page.expect_console_message(_ui_message("ui banner: shown")):
        page.evaluate("clarion(api => api.ui.get('banner').show())")
    # In the page's flow at its top (not over it): the page's first button moved down by it.
    height = page.evaluate(f"{banner}.getBoundingClientRect().height")
    assert height > 0
    moved = page.evaluate("document.getElementById('before').getBoundingClientRect().top")
    assert moved == pytest.approx(top + height, abs=1)
    labels = page.evaluate(
        f"Array.from({banner}.shadowRoot.querySelectorAll('button'),"
        " b => b.getAttribute('aria-label') ?? b.textContent)"
    )
    assert labels == ["Go", "Close"]
    page.evaluate("clarion(api => api.ui.hide('banner'))")  # the page's hide is no "no"
    page.wait_for_function(f"{banner} === null")
    with page.expect_console_message(_ui_message("ui banner: shown")):
        page.evaluate("clarion(api => api.ui.show('banner'))")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED) == "\u00d7"
    with page.expect_console_message(_ui_message("ui banner: refused")):
        page.keyboard.press("Enter")
    with page.expect_console_message(_ui_message("ui banner: not shown")) as held:
        page.evaluate("clarion(api => api.ui.show('banner'))")
    assert "refused" in held.value.text


@needs_chromium
def test_native_asks_at_the_first_click_from_the_configured_page_view(
    context: BrowserContext, site: Site
) -> None:
    site.ui = "{native: {pageViews: 2}}"
    page = context.new_page()
    with page.expect_console_message(_ui_message("ui native: not shown")) as held:
        page.goto(site.url())
    assert "page view 1 of the 2 pageViews asks" in held.value.text
    with page.expect_console_message(_ui_message("asked at the next click")):
        page.reload()
    # Nothing asked on page load.
    assert page.evaluate("Notification.permission") == "default"
    with page.expect_console_message(_ui_message("notification permission denied")):
        page.click("#before")
    assert page.evaluate("Notification.permission") == "denied"
    with page.expect_console_message(_ui_message("ui native: not shown")) as held:
        page.reload()
    assert "blocked" in held.value.text


@needs_chromium
def test_the_switcher_and_the_bell_follow_the_permission_and_subscribe(
    context: BrowserContext, site: Site
) -> None:
    site.ui = (
        "{switcher: {selector: '#prefs', label: 'Push alerts'},"
        " button: {hover: 'Alerts', popin: {btnSub: 'Turn on'}}}"
    )
    switch = (
        "document.querySelector('#prefs > clarion-ui').shadowRoot.querySelector('[role=switch]')"
    )
    bell = "document.querySelector('clarion-ui[data-ui=button]')"
    page = context.new_page()
    with page.expect_console_message(_ui_message("ui button: shown")):
        page.goto(site.url())
    assert page.evaluate(f"{switch}.getAttribute('aria-label')") == "Push alerts"
    assert page.evaluate(f"{switch}.getAttribute('aria-checked')") == "false"
    assert page.evaluate(f"{switch}.getAttribute('aria-disabled')") is None

    # Keyboard: the page's button, the switch, the bell; Enter opens the bell's panel with the
    # focus on its button; Escape closes it and gives the focus back to the bell.
    for _ in range(3):
        page.keyboard.press("Tab")
    assert page.evaluate(f"document.activeElement === {bell}")
    assert page.evaluate(f"{bell}.shadowRoot.activeElement.getAttribute('aria-label')") == "Alerts"
    page.keyboard.press("Enter")
    assert page.evaluate(FOCUSED) == "Turn on"
    assert (
        page.evaluate(f"{bell}.shadowRoot.querySelector('.bell').getAttribute('aria-expanded')")
        == "true"
    )
    page.keyboard.press("Escape")
    assert page.evaluate(f"{bell}.shadowRoot.getElementById('p').hidden") is True
    assert page.evaluate(f"{bell}.shadowRoot.activeElement.getAttribute('aria-label')") == "Alerts"

    # The switch asks (headless refuses): it turns disabled, described by the reason, and so
    # does the bell's panel.
    with page.expect_console_message(_ui_message("notification permission denied")):
        page.evaluate(f"{switch}.click()")
    page.wait_for_function(f"{switch}.getAttribute('aria-disabled') === 'true'")
    assert page.evaluate(f"{switch}.getAttribute('aria-checked')") == "false"
    assert "blocked" in page.evaluate(
        f"{switch}.getRootNode().getElementById({switch}.getAttribute('aria-describedby')).textContent"
    )
    assert page.evaluate(f"{bell}.shadowRoot.querySelector('.yes').hidden") is True


# The TypeScript's own tests, the committed bundle, the budget -----------------------------------


@needs_node
def test_the_typescript_unit_tests_pass() -> None:
    done = subprocess.run(
        ["npm", "test", "--silent"], cwd=WEBSDK, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout


@needs_node
@pytest.mark.parametrize(("option", "bundle"), [("--sdk-out", BUNDLE), ("--sw-out", WORKER_BUNDLE)])
def test_the_committed_bundle_is_the_build_of_the_sources(
    tmp_path: Path, option: str, bundle: Path
) -> None:
    built = tmp_path / bundle.name
    done = subprocess.run(
        ["node", "build.mjs", option, str(built)], cwd=WEBSDK, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert built.read_bytes() == bundle.read_bytes(), "run `make web` and commit the result"


@pytest.mark.parametrize(
    ("bundle", "budget"), [(BUNDLE, BUDGET_GZIPPED), (WORKER_BUNDLE, WORKER_BUDGET_GZIPPED)]
)
def test_the_bundle_is_within_its_size_budget(bundle: Path, budget: int) -> None:
    gzipped = len(gzip.compress(bundle.read_bytes(), compresslevel=9))
    assert gzipped <= budget, gzipped
