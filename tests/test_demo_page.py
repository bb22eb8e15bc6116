"""The demo page of `make run` (`clarion dev`, clarion/demo_page.py) in Debian's headless Chromium:
a real `clarion dev` (simulators, migrations, demo provisioning, API and workers on SQLite) in a
temporary directory, the page loaded from it as a newcomer would. And `/demo/` is `clarion dev`'s
only: `clarion serve`'s app has no such page.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.support.simulator import free_port, stop_process_group
from tests.test_dashboard_e2e import CHROMIUM, CHROMIUM_ARGS

BIN = Path(sys.executable).parent
START_WAIT = 90.0  # seconds for `clarion dev` to start the simulators, migrate and provision
WAIT = 15.0  # seconds for something the page does at once


@dataclass
class Dev:
    url: str
    directory: Path

    def demo(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.directory / "var" / "demo.json").read_text())
        return loaded


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    directory = tmp_path_factory.mktemp("dev")
    # `clarion dev` is configured as `make run` is: nothing but its own defaults under ./var.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    port, sim_port = free_port(), free_port()
    log = directory / "dev.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(BIN / "clarion"), "dev", "--port", str(port), "--sim-port", str(sim_port)],
            cwd=directory,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_WAIT
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"clarion dev did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)  # polling for readiness, not synchronising with a result
        yield Dev(url, directory)
    finally:
        # Its simulators run in their own process group, which `clarion dev` stops on its way out.
        children = _children(process.pid)
        stop_process_group(process)
        left = [pid for pid in children if _alive(pid)]
        for pid in left:
            os.killpg(pid, signal.SIGKILL)
    assert not left, f"clarion dev left its simulators running: {left}"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(child) for child in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/openapi.json", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


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
