"""The demo page `clarion dev` serves at `/demo/`: the Web SDK against the demo web app.

Only `clarion dev` mounts it (`clarion serve` has no `/demo/`): it names the demo web app's key,
which a production server has no business handing out. The page is Clarion's own origin, so its
SDK calls need no allowed-origin entry (the SDK's CORS middleware lets same-origin pages through).
"""

from __future__ import annotations

import html
import json

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Clarion Web SDK demo</title>
<style>
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
         padding: 0 1rem; color: #1d2330; }
  code, pre { background: #f1f3f7; border-radius: 4px; padding: 0.1rem 0.3rem; }
  pre { padding: 0.8rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
  button { font: inherit; padding: 0.4rem 1rem; }
</style>
<script>
  window.clarion = window.clarion || function () {
    (window.clarion.q = window.clarion.q || []).push(arguments);
  };
  clarion('setup', {apiKey: %(key_js)s, server: location.origin, debug: true});
</script>
<script src="/sdk/web/v1/clarion.js" async></script>
</head><body>
<h1>Clarion Web SDK demo</h1>
<p>This page loads <code>/sdk/web/v1/clarion.js</code> and sets it up with the key of the demo
web app (<code>%(key)s</code>), so this browser is now one of its installations.</p>
<p>Installation id: <code id="installation">registering…</code></p>
<p><button id="track" type="button">Track an event</button>
  <span id="tracked"></span></p>
<p>The button calls <code>api.trackEvent('demo_click', {label: 'button'})</code>; the browser's
console (debug mode) shows each call the SDK makes.</p>
<h2>In-app messages</h2>
<p>The demo web app has a live in-app campaign shown at the next session, once per browser:
you saw it (or will see it) on your first visit. To see another, create a campaign with the
company's REST API key: in a terminal, in Clarion's folder, <code>. var/demo.env</code> (written
by <code>make run</code>) sets <code>$REST_API_KEY</code>, then this command works as pasted;
open this page in a new tab afterwards (a new session):</p>
<pre id="curl">%(curl)s</pre>
<script>
  clarion(function (api) {
    api.getInstallationID().then(function (id) {
      document.getElementById('installation').textContent = id;
    });
    var tracked = 0;
    document.getElementById('track').addEventListener('click', function () {
      api.trackEvent('demo_click', {label: 'button'}).then(function () {
        tracked += 1;
        document.getElementById('tracked').textContent = tracked + ' tracked';
      });
    });
  });
</script>
</body></html>
"""


def curl_line(server: str, key: str) -> str:
    """The shell command that creates an in-app campaign for the app of `key`."""
    body = {
        "name": "Hello from curl",
        "live": True,
        "trigger": {"when": "NEXT_SESSION", "capping": 1},
        "landing": {
            "contents": [
                {
                    "title": "Hello from curl",
                    "body": "Created with the In-App Campaigns API.",
                    "actions": [{"label": "OK", "action": "dismiss"}],
                }
            ]
        },
    }
    return (
        f"curl -X POST {server}/1.1/{key}/in-app-campaigns/create \\\n"
        "  -H \"X-Authorization: $REST_API_KEY\" -H 'Content-Type: application/json' \\\n"
        f"  -d '{json.dumps(body)}'"
    )


def demo_page_router(*, web_key: str, server: str) -> APIRouter:
    """`GET /demo/`: the page, with the demo web app's key (`server` only fills the curl line;
    the page calls the origin it was loaded from)."""
    page = PAGE % {
        # json.dumps makes a JS string literal; `</` is escaped so it cannot end the script.
        "key_js": json.dumps(web_key).replace("</", "<\\/"),
        "key": html.escape(web_key),
        "curl": html.escape(curl_line(server, web_key)),
    }
    router = APIRouter(include_in_schema=False)

    # TrailingSlash (clarion/http.py) routes `/demo/` here too.
    @router.get("/demo", response_class=HTMLResponse)
    async def demo_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    return router
