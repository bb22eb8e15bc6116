"""The APNs simulator's ceiling: h2load against `POST /3/device/…` on one pinned core.

Run: `.venv/bin/python bench/sim_ceiling.py`. Clarion's own APNs throughput can only be measured
below this number, so it must stay well above the target (30,000 req/s on this machine).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE_TOKEN = "0123456789abcdef" * 4
TOPIC = "com.example.bench"
# About 200 bytes, the size of a typical alert with a deep link.
PAYLOAD = (
    b'{"aps":{"alert":{"title":"Flash sale","body":"Everything in the spring collection is 30% '
    b'off until midnight."},"sound":"default","badge":1},"deeplink":"app://sales/spring"}'
)
# The same server with no Python work at all: the ceiling of the ceiling on this machine.
SINK_APP = """
async def app(scope, protocol):
    await protocol()
    protocol.response_bytes(200, [("apns-id", "00000000-0000-0000-0000-000000000000")], b"")
"""


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "nghttp2-client"], check=True)
    found = shutil.which("h2load")
    if not found:
        raise SystemExit("h2load is still missing after installing nghttp2-client")
    return found


def pin(cpu: int) -> list[str]:
    """taskset prefix, when there is a core to pin to."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu)]
    return []


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every process in a process group (granian's main and worker)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def h2load(
    binary: str, url: str, headers: dict[str, str], body: Path, requests: int
) -> tuple[float, str]:
    command = [
        *pin(1),
        binary,
        "-n",
        str(requests),
        "-c",
        "4",
        "-m",
        "100",
        "-d",
        str(body),
        *[arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")],
        url,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    succeeded = re.search(r"(\d+) 2xx", output)
    if rate is None or succeeded is None or int(succeeded.group(1)) != requests:
        raise SystemExit(f"h2load did not get {requests} successes:\n{output}")
    return float(rate.group(1)), output


def baseline(
    binary: str, scratch: Path, port: int, headers: dict[str, str], body: Path, requests: int
) -> tuple[float, float]:
    """req/s and CPU µs per request of granian serving an app that does nothing."""
    (scratch / "bench_sink.py").write_text(SINK_APP)
    state = scratch / "state"
    command = [
        *pin(0),
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "rsgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ssl-certificate",
        str(state / "server.pem"),
        "--ssl-keyfile",
        str(state / "server.key"),
        "--http2-max-concurrent-streams",
        "1000",
        "--no-ws",
        "--working-dir",
        str(scratch),
        "bench_sink:app",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        url = f"https://127.0.0.1:{port}/3/device/{DEVICE_TOKEN}"
        h2load(binary, url, headers, body, 20_000)
        cpu = group_cpu_seconds(process.pid)
        rate = h2load(binary, url, headers, body, requests)[0]
        return rate, (group_cpu_seconds(process.pid) - cpu) / requests * 1e6
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()


def measure(binary: str, scratch: Path, requests: int, with_baseline: bool) -> None:
    from tests.support.simulator import free_port, running_simulator

    port = free_port()
    body = scratch / "payload.json"
    body.write_bytes(PAYLOAD)
    with running_simulator(scratch / "state", port=port, command_prefix=pin(0)) as sim:
        with sim.control_client() as control:
            key = control.post("/_sim/apns/keys", json={"topics": [TOPIC]}).json()
        token = jwt.encode(
            {"iss": key["team_id"], "iat": int(time.time())},
            key["private_key_pem"],
            algorithm="ES256",
            headers={"kid": key["key_id"]},
        )
        headers = {
            "authorization": f"bearer {token}",
            "apns-topic": TOPIC,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-expiration": "0",
            "content-type": "application/json",
        }
        url = f"{sim.base_url}/3/device/{DEVICE_TOKEN}"
        h2load(binary, url, headers, body, 20_000)  # warm-up: caches, allocator, TLS sessions
        assert sim.pid is not None
        cpu = group_cpu_seconds(sim.pid)
        rate, output = h2load(binary, url, headers, body, requests)
        cpu_us = (group_cpu_seconds(sim.pid) - cpu) / requests * 1e6
        with sim.control_client() as control:
            stats = control.get("/_sim/stats").json()["apns"]
    print(output)
    if stats["accepted"] != 20_000 + requests or stats["rejected"]:
        # h2load's req/s counts refused requests too.
        raise SystemExit(f"the simulator did not accept every request: {stats}")
    print(f"APNs simulator: {rate:,.0f} req/s ({len(PAYLOAD)}-byte payload, {stats})")
    # CPU per request holds up better than req/s when other work shares the core.
    print(f"  {cpu_us:.1f} µs of CPU per request: {1e6 / cpu_us:,.0f} req/s on a core of its own")
    if with_baseline:
        sink, sink_us = baseline(binary, scratch, port, headers, body, requests)
        print(f"granian, empty RSGI app, same harness: {sink:,.0f} req/s")
        print(f"  {sink_us:.1f} µs of CPU per request: {1e6 / sink_us:,.0f} req/s on its own core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument(
        "--baseline", action="store_true", help="also measure granian with an empty app"
    )
    args = parser.parse_args()
    binary = ensure_h2load()
    sys.path.insert(0, str(REPO_ROOT))
    with tempfile.TemporaryDirectory(prefix="sim-ceiling-") as scratch:
        measure(binary, Path(scratch), args.requests, args.baseline)


if __name__ == "__main__":
    main()
