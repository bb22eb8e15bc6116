"""The APNs simulator's ceiling: h2load against `POST /3/device/…` on one pinned core.

Run: `.venv/bin/python bench/sim_ceiling.py`. Clarion's own APNs throughput can only be measured
below this number, so it must stay well above the target (30,000 req/s on this machine).
"""

import argparse
import os
import re
import shutil
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    binary = ensure_h2load()
    sys.path.insert(0, str(REPO_ROOT))
    from tests.support.simulator import running_simulator

    with (
        tempfile.TemporaryDirectory() as scratch,
        running_simulator(Path(scratch) / "state", command_prefix=pin(0)) as sim,
    ):
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
        body = Path(scratch) / "payload.json"
        body.write_bytes(PAYLOAD)
        url = f"{sim.base_url}/3/device/{DEVICE_TOKEN}"
        h2load(binary, url, headers, body, 20_000)  # warm-up: caches, allocator, TLS sessions
        rate, output = h2load(binary, url, headers, body, args.requests)
        with sim.control_client() as control:
            stats = control.get("/_sim/stats").json()["apns"]
    print(output)
    print(f"APNs simulator: {rate:,.0f} req/s ({len(PAYLOAD)}-byte payload, {stats})")


if __name__ == "__main__":
    main()
