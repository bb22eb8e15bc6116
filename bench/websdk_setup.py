"""The Web SDK's setup in a browser: from `clarion('setup', ...)` to a registered installation
(issue 18: <= 300 ms on loopback).

A real `clarion serve` on SQLite (pinned to core 0) with one web app, and Debian's headless
Chromium driven by Playwright (core 1). A page of another origin (a site, served here; its
origin in the app's allowed origins, so the SDK's calls are cross-origin, preflighted, as on
a real site) runs the install snippet of docs/web-sdk.md in production mode. Each visit is a
new browser context, so a first visit: no HTTP cache (clarion.js is downloaded), no IndexedDB
(a new installation id), no cached CORS preflight. For each visit the page itself measures,
on its own clock (performance.now()):

- setup_to_registered: from the snippet's `clarion('setup', ...)` call to the end of the
  registration's answer (`PUT /sdk/v1/{key}/installations/{id}`, its Resource Timing entry's
  responseEnd): downloading and running clarion.js, opening IndexedDB, the time zone, the
  preflight and the PUT;
- navigation_to_registered: the same from the page's navigation start (its HTML included);
- and where the time goes: the script's download (setup_to_script_loaded, negative when the
  browser had it before the snippet ran: the async script tag is fetched as the page's head is
  parsed), the SDK's own work until it sends the registration, the registration's call
  (preflight and PUT).

Before printing, it checks that every registration was answered 200 and that every visit's
installation is in the database, once. `--without-temporal` removes Temporal from the page, as
in browsers before it, where the SDK reads the time zone in a worker (facts.ts, timeZone).

    .venv/bin/python -m bench.websdk_setup --visits 50 [--without-temporal]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Response, sync_playwright

from bench.common import pin, report, serve_clarion
from tests.support.simulator import free_port
from tests.test_dashboard_e2e import CHROMIUM, CHROMIUM_ARGS

BIN = Path(sys.executable).parent
WARM_UP = 3  # visits not counted: the browser's and the server's first ones

# The install snippet, with the moment of the setup call kept for the measure.
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>shop</title>
<script>
  window.clarion = window.clarion || function () {
    (window.clarion.q = window.clarion.q || []).push(arguments);
  };
  window.setupCalledAt = performance.now();
  clarion('setup', {apiKey: '%KEY%', server: '%SERVER%'});
</script>
<script src="%SERVER%/sdk/web/v1/clarion.js" async></script></head>
<body><h1>shop</h1></body></html>"""

# The registration's Resource Timing entry (the only call to the installation's own URL) and
# the script's.
MEASURE = """() => {
  const entries = performance.getEntriesByType('resource');
  const entry = entries.find(
    e => e.initiatorType === 'fetch' && /\\/installations\\/[^/]+$/.test(e.name));
  const script = entries.find(e => e.name.endsWith('/sdk/web/v1/clarion.js'));
  return entry && script && {
    calledAt: window.setupCalledAt, registeredAt: entry.responseEnd, url: entry.name,
    scriptLoadedAt: script.responseEnd, registrationSentAt: entry.startTime};
}"""


@contextmanager
def site(page: bytes) -> Iterator[str]:
    """The site's origin, serving `page` at /."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "clarion"), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"clarion {args[0]} failed: {done.stderr[-2000:]}")
    return done.stdout


def is_registration(response: Response) -> bool:
    return response.request.method == "PUT" and "/installations/" in response.url


def visit(browser: Browser, url: str, *, temporal: bool) -> dict[str, Any]:
    """One first visit; the page's measure, the installation id and the PUT's status."""
    context = browser.new_context()
    try:
        page = context.new_page()
        if not temporal:  # as a browser before Temporal: the SDK reads the zone in a worker
            page.add_init_script("delete globalThis.Temporal")
        with page.expect_response(is_registration) as registered:
            page.goto(url)
        status = registered.value.status
        registered.value.finished()  # its Resource Timing entry is there once it has ended
        measured: dict[str, Any] | None = page.evaluate(MEASURE)
        install_id: str = page.evaluate(
            "new Promise(resolve => clarion(api => api.getInstallationID().then(resolve)))"
        )
    finally:
        context.close()
    if measured is None or not measured["url"].endswith(f"/installations/{install_id}"):
        raise SystemExit(f"no Resource Timing entry for the registration of {install_id}")
    return {**measured, "status": status, "install_id": install_id}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 1),
        "max_ms": round(ordered[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visits", type=int, default=50)
    parser.add_argument(
        "--without-temporal", action="store_true", help="as in a browser without Temporal"
    )
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        database = var / "clarion.db"
        env = {
            "CLARION_VAR_DIR": str(var),
            "CLARION_DATABASE_URL": f"sqlite:///{database}",
        }
        full_env = {**os.environ, **env}
        cli(full_env, "migrate")
        app = json.loads(cli(full_env, "apps", "create", "--name", "shop", "--platform", "web"))
        port = free_port()
        server = serve_clarion(port, env, workers=False)
        clarion_url = f"http://127.0.0.1:{port}"
        pin(1)  # this process, and the browser it starts
        page = PAGE.replace("%KEY%", app["api_key"]).replace("%SERVER%", clarion_url)
        try:
            with site(page.encode()) as origin, sync_playwright() as playwright:
                allowed = httpx.put(
                    f"{clarion_url}/admin/v1/apps/{app['id']}/allowed-origins",
                    headers={"X-Authorization": app["rest_api_key"]},
                    json={"allowed_origins": [origin]},
                )
                allowed.raise_for_status()
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                )
                try:
                    temporal = not args.without_temporal
                    visits = [
                        visit(browser, f"{origin}/", temporal=temporal)
                        for _ in range(WARM_UP + args.visits)
                    ]
                finally:
                    browser.close()
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
        ids = [v["install_id"] for v in visits]
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            stored = [row[0] for row in db.execute("SELECT install_id FROM installations")]
    if sorted(stored) != sorted(ids) or len(set(ids)) != len(ids):
        raise SystemExit(f"{len(ids)} visits, {len(set(ids))} ids, {len(stored)} installations")
    if any(v["status"] != 200 for v in visits):
        raise SystemExit(f"registrations answered {sorted({v['status'] for v in visits})}")
    counted = visits[WARM_UP:]
    figures = {
        "visits": len(counted),
        "temporal": not args.without_temporal,
        "setup_to_registered": summary([v["registeredAt"] - v["calledAt"] for v in counted]),
        "navigation_to_registered": summary([v["registeredAt"] for v in counted]),
        # Where the time goes: the script's download, the SDK's work until it calls the server
        # (running the script, IndexedDB, the time zone), the call (preflight and PUT).
        "setup_to_script_loaded": summary([v["scriptLoadedAt"] - v["calledAt"] for v in counted]),
        "script_loaded_to_registration_sent": summary(
            [v["registrationSentAt"] - v["scriptLoadedAt"] for v in counted]
        ),
        "registration_call": summary(
            [v["registeredAt"] - v["registrationSentAt"] for v in counted]
        ),
        "installations_checked": len(stored),
    }
    report("websdk_setup" + ("_without_temporal" if args.without_temporal else ""), figures)


if __name__ == "__main__":
    main()
