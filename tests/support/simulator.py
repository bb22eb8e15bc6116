"""Start `python -m clarion.sim` in a subprocess for tests, over real TLS on a free loopback port.

See docs/simulators.md for what the simulator answers.
"""

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from clarion.outbound import OutboundPolicy, parse_allowed

# The simulators and the storage servers (storage_servers.py) listen on this loopback address,
# which Clarion's outbound policy refuses by default: tests and benchmarks allow it, and only
# it, with CLARION_OUTBOUND_ALLOW (tests of the policy use 127.0.0.2 as a refused address).
LOCAL_SERVERS_ALLOW = ["127.0.0.1/32"]
LOCAL_SERVERS_POLICY = OutboundPolicy(*parse_allowed(LOCAL_SERVERS_ALLOW))

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class SimulatorHandle:
    base_url: str
    ca_file: Path
    state_dir: Path
    pid: int | None = None  # also the id of its process group (granian's main + worker)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def control_client(self, *, http2: bool = False) -> httpx.Client:
        """A client for the `/_sim/` control API (or any simulated service) trusting the CA."""
        return httpx.Client(
            base_url=self.base_url, verify=self.ssl_context(), http2=http2, timeout=10.0
        )


# The APNs endpoints the delivery tests run against: granian's port, and the simulators' h2
# listener, whose new connections allow 1 stream until they have answered a request, as APNs
# does before it has checked the provider token (docs/simulators.md, "Connection behaviours").
APNS_ENDPOINTS = ("granian", "one-stream")


def apns_endpoint(sim: SimulatorHandle, control: httpx.Client, kind: str) -> str:
    if kind == "granian":
        return sim.base_url
    response = control.get("/_sim/connections")
    response.raise_for_status()
    url: str = response.json()["url"]
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(handle: SimulatorHandle) -> bool:
    if not handle.ca_file.exists():
        return False
    try:
        with handle.control_client() as client:
            return client.get("/_sim/stats").status_code == 200
    except (httpx.TransportError, ssl.SSLError, OSError):
        return False


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    # The simulator runs in its own session: signal the whole group so granian's worker goes too.
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def running_simulator(
    state_dir: Path, *, port: int | None = None, command_prefix: Sequence[str] = ()
) -> Iterator[SimulatorHandle]:
    """Yield a handle to a running simulator; stop it (and its worker) on exit.

    `command_prefix` wraps the command, e.g. `("taskset", "-c", "0")` for benchmarks.
    """
    port = port or free_port()
    command = [
        *command_prefix,
        sys.executable,
        "-m",
        "clarion.sim",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
    ]
    # A file, not a pipe: a chatty server must never block on a full pipe nobody reads.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"https://127.0.0.1:{port}"
        handle = SimulatorHandle(url, state_dir / "ca.pem", state_dir, process.pid)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _answers(handle):
                if process.poll() is not None or time.monotonic() > deadline:
                    stop_process_group(process)
                    output.seek(0)
                    log = output.read().decode("utf-8", "replace")
                    raise RuntimeError(
                        f"simulator did not start on port {port} "
                        f"(exit code {process.returncode}):\n{log}"
                    )
                time.sleep(0.1)
            yield handle
        finally:
            stop_process_group(process)
