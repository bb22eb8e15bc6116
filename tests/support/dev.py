"""A real `clarion dev` (what `make run` starts: simulators, migrations, demo provisioning, API
and workers on SQLite) in a directory of its own, for the tests that use it as a newcomer would
(tests/test_demo_page.py, tests/test_readme.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.simulator import free_port, stop_process_group
from tests.support.waiting import until

BIN = Path(sys.executable).parent
# Seconds for `clarion dev` to start the simulators, migrate and provision: ~8 s on a loaded
# 2-core machine (load 9), so a deadline ten times that only matters when something is wrong.
START_WAIT = 90.0


@dataclass
class Dev:
    url: str
    sim_port: int
    directory: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def demo(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.directory / "var" / "demo.json").read_text())
        return loaded


def dev_environment() -> dict[str, str]:
    """The environment `make run` gives `clarion dev`: none of the CLARION_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}


@contextmanager
def running_dev(directory: Path) -> Iterator[Dev]:
    """`clarion dev` on free ports with `directory` as its working directory (its ./var), until
    it answers; stopped afterwards, with a check that it stopped its simulators too."""
    port, sim_port = free_port(), free_port()
    log = directory / "dev.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(BIN / "clarion"), "dev", "--port", str(port), "--sim-port", str(sim_port)],
            cwd=directory,
            env=dev_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with contextlib.suppress(AssertionError):  # a timeout: said below, with the log
            until(
                lambda: process.poll() is not None or _ready(url),
                what="clarion dev answering",
                timeout=START_WAIT,
                every=0.2,
            )
        if process.poll() is not None or not _ready(url):
            raise RuntimeError(f"clarion dev did not start:\n{log.read_text()[-4000:]}")
        yield Dev(url, sim_port, directory)
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
        return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False
