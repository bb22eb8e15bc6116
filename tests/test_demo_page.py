"""The demo page of `make run` (`clarion dev`, clarion/demo_page.py) in Debian's headless Chromium:
a real `clarion dev` (simulators, migrations, demo provisioning, API and workers on SQLite) in a
temporary directory, the page loaded from it as a newcomer would. And `/demo/` is `clarion dev`'s
only: `clarion serve`'s app has no such page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.support.dev import Dev, running_dev
from tests.test_dashboard_e2e import CHROMIUM, CHROMIUM_ARGS

WAIT = 15.0  # seconds for something the page does at once


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    with running_dev(tmp_path_factory.mktemp("dev")) as running:
        yield running


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium package is not installed (see .ci/run)"
)
def test_the_demo_page_registers_the_browser_and_shows_the_demo_inapp_message(dev: Dev) -> None:
    apps = dev.demo()["apps"]
    assert isinstance(apps, dict)
    web_key = apps["web"]["api_key"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            with (
                page.expect_response(
                    lambda r: r.request.method == "PUT" and "/installations/" in r.url,
                    timeout=WAIT * 1000,
                ) as registered,
                page.expect_console_message(
                    lambda m: "in-app (session)" in m.text, timeout=WAIT * 1000
                ),
            ):
                page.goto(f"{dev.url}/demo/")
            # Same origin as Clarion: no allowed-origin entry was made, yet the SDK was answered.
            assert registered.value.status == 200, registered.value.text()
            assert f"/sdk/v1/{web_key}/installations/" in registered.value.url
            installation = page.locator("#installation")
            installation.filter(has_text=re.compile("^[0-9a-f-]{36}$")).wait_for(
                timeout=WAIT * 1000
            )
            assert (installation.text_content() or "?") in registered.value.url
            message = page.locator("clarion-inapp").get_by_text("Welcome to Clarion")
            message.wait_for(timeout=WAIT * 1000)

            page.locator("clarion-inapp").get_by_role("button", name="Got it").click()
            with page.expect_response(
                lambda r: r.request.method == "POST" and r.url.endswith("/events"),
                timeout=WAIT * 1000,
            ) as tracked:
                page.locator("#track").click()
            assert tracked.value.status == 202, tracked.value.text()
            assert page.locator("#tracked").text_content() == "1 tracked"
            assert web_key in (page.locator("#curl").text_content() or "")
        finally:
            browser.close()


async def test_serve_has_no_demo_page(api: httpx.AsyncClient) -> None:
    """`clarion serve` builds its app with create_app alone, as this fixture does."""
    answer = await api.get("/demo/")
    assert answer.status_code == 404
    assert "/demo/" not in (await api.get("/openapi.json")).json()["paths"]
