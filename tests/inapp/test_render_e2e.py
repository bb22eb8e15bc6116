"""The in-app renderer (websdk/src/inapp/, built into clarion/dashboard/static/inapp-render.js)
in Debian's headless Chromium, driven by Playwright as the dashboard's end-to-end tests are.

The page comes from a small HTTP server of the test's own (the renderer needs no Clarion): the
committed bundle, a page sent with the dashboard's Content-Security-Policy and a hostile
stylesheet, and the same page without either for the navigation tests.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.simulator import REPO_ROOT
from tests.test_dashboard_e2e import CHROMIUM

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium package is not installed (see .ci/run)"
)

BUNDLE = REPO_ROOT / "clarion" / "dashboard" / "static" / "inapp-render.js"
WEBSDK = REPO_ROOT / "websdk"
# What the dashboard sends (clarion/dashboard/web.py): the renderer must work under it.
CSP = (
    "default-src 'self'; img-src 'self' data: https:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# `body *` rather than `*`: `*` also hides <html> and <body>, and nothing inside a hidden
# element is drawn, shadow DOM or not. Inherited properties (color, font-size) are set on
# everything, the host element included.
HOSTILE_CSS = b"""
body * { display: none !important; }
* { color: #ff0000 !important; font-size: 3px !important; line-height: 0 !important; }
button { background: #ff0000 !important; padding: 40px !important; }
h2, p { display: none !important; }
"""
PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>page</title>
<link rel="stylesheet" href="/hostile.css"><script src="/inapp-render.js"></script></head>
<body><button id="before">Before</button><button class="cta" id="page-cta">Page</button>
<div id="preview"></div></body></html>"""
OPEN_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>open</title>
<script src="/inapp-render.js"></script></head>
<body><button id="before">Before</button><div id="preview"></div></body></html>"""
LANDED = b"<!doctype html><title>landed</title><p>landed</p>"

TITLE_ATTACK = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
BODY_ATTACK = '<svg onload="window.pwned=3"></svg><style>*{display:none}</style>Half price'
LAYOUTS = ["modal", "banner_top", "banner_bottom", "fullscreen", "image"]


class _Site(ThreadingHTTPServer):
    daemon_threads = True
    requested: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Site

    def do_GET(self) -> None:
        self.server.requested.append(self.path)
        files: dict[str, tuple[str, bytes, bool]] = {
            "/page.html": ("text/html; charset=utf-8", PAGE, True),
            "/hostile.css": ("text/css", HOSTILE_CSS, True),
            "/open.html": ("text/html; charset=utf-8", OPEN_PAGE, False),
            "/landed.html": ("text/html; charset=utf-8", LANDED, False),
            "/inapp-render.js": ("text/javascript", BUNDLE.read_bytes(), False),
        }
        if self.path == "/favicon.ico":
            # The browser asks once, during whichever test comes first (shuffled runs): a 404
            # would be logged on that test's console, which some tests require empty.
            self.send_response(204)
            self.end_headers()
            return
        if self.path not in files:
            self.send_error(404)
            return
        content_type, body, with_csp = files[self.path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if with_csp:
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[_Site]:
    server = _Site(("127.0.0.1", 0), _Handler)
    server.requested = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _url(site: _Site, path: str) -> str:
    return f"http://127.0.0.1:{site.server_address[1]}{path}"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 800, "height": 600})
    yield page
    page.close()


def _message(layout: str = "modal", **fields: Any) -> dict[str, Any]:
    """An SdkMessage as clarion/inapp/schemas.py hands it out."""
    message: dict[str, Any] = {
        "campaign_token": "campaign-1",
        "version": None,
        "trigger": {"when": "next_session", "event": None, "label": None},
        "capping": None,
        "grace_period_seconds": 0,
        "start": None,
        "end": None,
        "theme": {
            "code": "default",
            "layout": layout,
            "colours": {
                "background": "#FFFFFF",
                "text": "#1F2933",
                "header": "#52606D",
                "title": "#1F2933",
                "button_background": "#2563EB",
                "button_text": "#00FF00",
                "close": "#52606D",
                "backdrop": "#00000080",
            },
            "font": {"family": "system-ui, sans-serif", "size": 18},
            "close_button": "top_right",
            "corner_radius": 12,
            "auto_close_seconds": 0,
        },
        "image": None,
        "image_description": None,
        "header": "News",
        "title": "Spring sale",
        "body": "Everything at half price.",
        "actions": [
            {"label": "Shop now", "action": "continue", "args": None},
            {"label": "Later", "action": "dismiss", "args": None},
        ],
        "deeplink": None,
        "custom_payload": None,
    }
    message.update(fields)
    return message


def _show(page: Page, message: dict[str, Any], *, preview: bool = False) -> None:
    """Renders the message as the SDK would; window.events records the callbacks."""
    page.evaluate(
        """([message, preview]) => {
            window.events = window.events || [];
            window.shown = ClarionInApp.render(message, {
                preview,
                container: preview ? document.getElementById('preview') : undefined,
                onAction: (position, action) =>
                    window.events.push(['action', position, action.label, action.action]),
                onClose: () => window.events.push(['close']),
            });
        }""",
        [message, preview],
    )


def _events(page: Page) -> list[list[Any]]:
    events: list[list[Any]] = page.evaluate("window.events")
    return events


def _hosts(page: Page) -> int:
    count: int = page.evaluate("document.querySelectorAll('clarion-inapp').length")
    return count


def _shadow(page: Page, script: str) -> Any:
    """Evaluates `script` with `root` bound to the message's shadow root."""
    return page.evaluate(
        f"(() => {{ const root = document.querySelector('clarion-inapp').shadowRoot; "
        f"return {script}; }})()"
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_draws_tenant_text_as_text(page: Page, site: _Site, layout: str) -> None:
    page.goto(_url(site, "/page.html"))
    image = "https://images.example/sale.png"
    message = _message(layout, title=TITLE_ATTACK, body=BODY_ATTACK, image=image)
    _show(page, {**message, "image_description": "A sale", "header": "<b>News</b>"})

    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    if layout == "image":
        # The image alone, as one button; the title is not drawn.
        expect(dialog.get_by_role("button", name="A sale")).to_be_visible()
        assert _shadow(page, "root.querySelector('h2')") is None
    else:
        expect(dialog.get_by_role("heading")).to_have_text(TITLE_ATTACK)
        expect(dialog).to_have_accessible_name(TITLE_ATTACK)
        expect(dialog.get_by_text(BODY_ATTACK)).to_be_visible()
        expect(dialog.get_by_text("<b>News</b>")).to_be_visible()
        expect(dialog.get_by_role("button", name="Shop now")).to_be_visible()
    # The only element the message created from its fields is the https: image.
    assert _shadow(page, "root.querySelectorAll('script, svg, b').length") == 0
    assert _shadow(page, "root.querySelectorAll('style').length") == 0
    assert _shadow(page, "[...root.querySelectorAll('img')].map(i => i.src)") == [image]
    assert page.evaluate("window.pwned") is None
    expect(dialog.get_by_role("button", name="Close")).to_be_visible()

    modal = layout in {"modal", "fullscreen", "image"}
    assert (dialog.get_attribute("aria-modal") == "true") is modal
    box = dialog.bounding_box()
    assert box is not None
    if layout == "banner_top":
        assert box["y"] < 50
    elif layout == "banner_bottom":
        assert box["y"] + box["height"] > 550
    elif layout == "fullscreen":
        assert (box["width"], box["height"]) == (800, 600)


def test_an_image_that_is_not_https_is_not_loaded(page: Page, site: _Site) -> None:
    page.goto(_url(site, "/page.html"))
    _show(page, _message(image="http://images.example/sale.png"))
    expect(page.get_by_role("dialog")).to_be_visible()
    assert _shadow(page, "root.querySelectorAll('img').length") == 0


def test_a_button_reports_its_position_and_label_then_closes(page: Page, site: _Site) -> None:
    page.goto(_url(site, "/open.html"))
    page.locator("#before").focus()
    _show(page, _message())
    page.get_by_role("button", name="Later").click()
    assert _events(page) == [["action", 1, "Later", "dismiss"]]
    assert _hosts(page) == 0
    # The focus goes back where it was before the dialog took it.
    assert page.evaluate("document.activeElement.id") == "before"


def test_the_image_layout_runs_the_first_action(page: Page, site: _Site) -> None:
    page.goto(_url(site, "/page.html"))
    message = _message("image", image="https://images.example/a.png", image_description="Open")
    _show(page, message)
    page.get_by_role("button", name="Open").click()
    assert _events(page) == [["action", 0, "Shop now", "continue"]]
    assert _hosts(page) == 0


def test_the_close_button_calls_on_close(page: Page, site: _Site) -> None:
    page.goto(_url(site, "/page.html"))
    _show(page, _message("banner_top"))
    page.get_by_role("button", name="Close").click()
    assert _events(page) == [["close"]]
    assert _hosts(page) == 0


def test_a_click_on_the_backdrop_closes_a_modal(page: Page, site: _Site) -> None:
    page.goto(_url(site, "/page.html"))
    _show(page, _message())
    page.mouse.click(5, 5)
    assert _events(page) == [["close"]]
    assert _hosts(page) == 0


def test_a_dialog_takes_the_focus_keeps_tab_inside_and_closes_on_escape(
    page: Page, site: _Site
) -> None:
    page.goto(_url(site, "/open.html"))
    page.locator("#before").focus()
    _show(page, _message())
    assert _shadow(page, "root.activeElement.getAttribute('role')") == "dialog"
    focused = []
    for _ in range(4):
        page.keyboard.press("Tab")
        focused.append(_shadow(page, "root.activeElement.textContent"))
    # Close, the two buttons, then round again: Tab never reaches the page behind.
    assert focused == ["\u00d7", "Shop now", "Later", "\u00d7"]
    page.keyboard.press("Shift+Tab")
    assert _shadow(page, "root.activeElement.textContent") == "Later"
    page.keyboard.press("Escape")
    assert _events(page) == [["close"]]
    assert _hosts(page) == 0
    assert page.evaluate("document.activeElement.id") == "before"


def test_a_banner_leaves_the_page_usable(page: Page, site: _Site) -> None:
    page.goto(_url(site, "/open.html"))
    _show(page, _message("banner_bottom"))
    # No backdrop: the page's own button still takes clicks, and the focus stays on the page.
    page.locator("#before").click()
    assert page.evaluate("document.activeElement.id") == "before"
    assert _events(page) == []
    assert _hosts(page) == 1


@pytest.mark.parametrize(
    "link",
    [
        "javascript:fetch('/pwned')",
        "JavaScript:fetch('/pwned')",
        " java\tscript:fetch('/pwned')",
        "data:text/html,<script>fetch('/pwned')</script>",
        "vbscript:fetch('/pwned')",
    ],
)
def test_a_script_deeplink_is_not_followed(page: Page, site: _Site, link: str) -> None:
    # The page without a Content-Security-Policy: the renderer's own check is what stops it.
    # Chromium runs a javascript: link (the fetch reaches the site) and refuses the others
    # itself, saying so on the console ("Not allowed to navigate top frame to data URL",
    # "Not allowed to launch 'vbscript:...'"): the renderer must not even try.
    console: list[str] = []
    page.on("console", lambda entry: console.append(entry.text))
    page.goto(_url(site, "/open.html"))
    already = len(site.requested)
    bad = {"label": "Open", "action": "deeplink", "args": {"l": link}}
    _show(page, _message(actions=[bad]))
    page.get_by_role("button", name="Open").click()
    assert _events(page) == [["action", 0, "Open", "deeplink"]]
    # A link that may be followed, clicked after: by the time it has loaded, a navigation the
    # first click had started would have run.
    good = {"label": "Go", "action": "deeplink", "args": {"l": "/landed.html"}}
    _show(page, _message(actions=[good]))
    page.get_by_role("button", name="Go").click()
    expect(page).to_have_url(_url(site, "/landed.html"))
    asked = [path for path in site.requested[already:] if path != "/favicon.ico"]
    assert asked == ["/landed.html"]
    assert console == []


def test_the_site_css_and_the_message_css_stay_apart(page: Page, site: _Site) -> None:
    # page.html has the dashboard's Content-Security-Policy (no inline style) and a stylesheet
    # that hides and recolours everything it can reach.
    page.goto(_url(site, "/page.html"))
    _show(page, _message())
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", name="Spring sale")).to_be_visible()
    cta = dialog.get_by_role("button", name="Shop now")
    expect(cta).to_be_visible()
    expect(cta).to_have_css("color", "rgb(0, 255, 0)")
    expect(cta).to_have_css("background-color", "rgb(37, 99, 235)")
    expect(cta).to_have_css("padding-top", "10px")
    expect(dialog.get_by_text("Everything at half price.")).to_have_css("font-size", "18px")
    # The message's `.cta` rule does not style the page's own `.cta`.
    page_cta = page.locator("#page-cta")
    assert page_cta.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 0, 0)"


_CLOCK_START_MS = 1_800_000_000_000  # 2027-01-15, any fixed instant


def _stopped_clock(page: Page, path: str, site: _Site) -> None:
    """Open the page on a clock that moves only when the test says: an installed clock still
    flows with real time until paused, and a loaded machine let a 5 s banner close by itself."""
    page.clock.install(time=_CLOCK_START_MS)
    page.goto(_url(site, path))
    page.clock.pause_at(_CLOCK_START_MS + 600_000)


@pytest.mark.parametrize(
    ("layout", "closes"),
    [("banner_top", True), ("banner_bottom", True), ("modal", False), ("fullscreen", False)],
)
def test_only_banners_close_after_auto_close_seconds(
    page: Page, site: _Site, layout: str, closes: bool
) -> None:
    _stopped_clock(page, "/page.html", site)
    message = _message(layout)
    message["theme"]["auto_close_seconds"] = 5
    _show(page, message)
    page.clock.run_for(4_900)
    assert _hosts(page) == 1
    page.clock.run_for(200)
    # A dialog waits for its reader.
    assert _hosts(page) == (0 if closes else 1)
    assert _events(page) == ([["close"]] if closes else [])


def test_the_preview_draws_inside_its_container_and_leaves_the_page_alone(
    page: Page, site: _Site
) -> None:
    _stopped_clock(page, "/open.html", site)
    page.evaluate(
        "Object.assign(document.getElementById('preview').style,"
        " {width: '320px', height: '480px', marginLeft: '200px'})"
    )
    page.locator("#before").focus()
    message = _message("banner_bottom")
    message["theme"]["auto_close_seconds"] = 2
    _show(page, message, preview=True)

    assert page.evaluate("document.querySelector('#preview > clarion-inapp') !== null")
    container = page.locator("#preview").bounding_box()
    box = page.get_by_role("dialog").bounding_box()
    assert container is not None
    assert box is not None
    assert container["x"] <= box["x"]
    assert box["x"] + box["width"] <= container["x"] + 320
    assert box["y"] + box["height"] <= container["y"] + 480
    # The editor keeps its focus and keys, and the preview stays until it is replaced.
    assert page.evaluate("document.activeElement.id") == "before"
    page.keyboard.press("Escape")
    page.clock.run_for(10_000)
    assert _hosts(page) == 1
    page.evaluate("window.shown.close()")
    assert _hosts(page) == 0
    assert _events(page) == []


def test_the_preview_takes_the_defaults_for_what_the_editor_left_out(
    page: Page, site: _Site
) -> None:
    page.goto(_url(site, "/open.html"))
    page.evaluate("document.getElementById('preview').style.height = '480px'")
    page.evaluate(
        "ClarionInApp.render({theme: {layout: 'banner_top'}, title: 'Draft'},"
        " {container: document.getElementById('preview'), preview: true})"
    )
    dialog = page.get_by_role("dialog", name="Draft")
    expect(dialog).to_be_visible()
    # ThemeColours' and ThemeBody's defaults in clarion/inapp/schemas.py.
    expect(dialog).to_have_css("background-color", "rgb(255, 255, 255)")
    expect(dialog).to_have_css("border-top-left-radius", "12px")
    expect(dialog.get_by_role("button", name="Close")).to_be_visible()


def test_the_bundle_stays_small() -> None:
    # Issue 18's budget for the whole Web SDK is 20 KB gzipped; the renderer takes a quarter.
    assert len(gzip.compress(BUNDLE.read_bytes(), 9)) <= 5_000


def test_the_committed_bundle_is_built_from_the_sources(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (WEBSDK / "node_modules").is_dir():
        pytest.skip("needs node and websdk/node_modules (make web installs them)")
    built = tmp_path / "inapp-render.js"
    subprocess.run([node, "build.mjs", "--out", str(built)], cwd=WEBSDK, check=True)
    assert built.read_bytes() == BUNDLE.read_bytes(), "run `make web` and commit the result"
