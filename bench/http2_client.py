"""Throughput of clarion.http2 against a local APNs-like sink, next to h2load's ceiling.

The sink (granian, raw RSGI: 200, empty body, an `apns-id` header) runs pinned to core 0, the
client to core 1. Run: `.venv/bin/python bench/http2_client.py [--requests 200000]`.
See docs/decisions/0002-http2-client.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SINK_CORE, CLIENT_CORE = 0, 1

TOKEN = "5f6aa01d8e3358949b7c25d461bb78ad740f4707462c7eafbebcf74fa5ddb387"
TOKENS = [f"{i:08x}{TOKEN[8:]}" for i in range(1000)]
BODY = (
    b'{"aps":{"alert":{"title":"Your order has shipped","body":"Order #48213 left our warehouse'
    b' and arrives Thursday."},"badge":1,"sound":"default"},"com.batch":{"i":"c-7f3a9e"}}'
)
HEADERS = (
    ("authorization", "bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyM0RFRkcifQ." + "x" * 120),
    ("apns-topic", "com.example.app"),
    ("apns-push-type", "alert"),
    ("content-type", "application/json"),
)

_apns_ids = itertools.count()


async def apns_sink(scope: Any, proto: Any) -> None:
    """The sink granian serves (imported by granian from this file)."""
    await proto()
    n = next(_apns_ids)
    proto.response_empty(200, [("apns-id", f"{n:08x}-0000-4000-8000-000000000000")])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_tls(directory: Path) -> tuple[Path, Path, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(paths[0])
    cert.cert_chain_pems[0].write_to_path(paths[1])
    cert.private_key_pem.write_to_path(paths[2])
    return paths


def _start_sink(port: int, cert: Path, key: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            *("taskset", "-c", str(SINK_CORE), sys.executable, "-m", "granian"),
            *(
                "--interface",
                "rsgi",
                "--http",
                os.environ.get("SINK_HTTP", "2"),
                "--no-ws",
                "--log-level",
                "warning",
            ),
            *("--host", "127.0.0.1", "--port", str(port)),
            *("--http2-max-concurrent-streams", "1000"),
            *("--ssl-certificate", str(cert), "--ssl-keyfile", str(key)),
            *("--working-dir", str(BENCH_DIR), "http2_client:apns_sink"),
        ],
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("the sink did not start")


async def _run_client(
    base_url: str, ca: Path, total: int, in_flight: int, chunk: int, connections: int, streams: int
) -> tuple[float, float, int]:
    from clarion.http2 import Http2Client, HttpRequest, HttpResponse

    client = Http2Client(
        ca_file=str(ca), max_connections_per_host=connections, max_concurrent_streams=streams
    )
    url = f"{base_url}/3/device/{TOKEN}"
    await client.request_many([HttpRequest("POST", url, HEADERS, BODY)] * 10)  # connect
    devices = f"{base_url}/3/device/"
    failures = 0
    chunks = iter(range(total // chunk))

    async def lane() -> None:
        # One lane is a provider sending batch after batch: it builds the requests (one URL
        # per device token), sends them together, and reads every status.
        nonlocal failures
        for n in chunks:
            first = n * chunk % len(TOKENS)
            requests = [
                HttpRequest("POST", devices + token, HEADERS, BODY)
                for token in TOKENS[first : first + chunk]
            ]
            for result in await client.request_many(requests):
                if not isinstance(result, HttpResponse) or result.status != 200:
                    failures += 1

    cpu_before, wall_before = os.times(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight // chunk)))
    wall = time.perf_counter() - wall_before
    cpu_after = os.times()
    await client.aclose()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    done = (total // chunk) * chunk
    return done / wall, cpu / done * 1e6, failures


def _h2load(base_url: str, total: int, connections: int, body_file: Path) -> float | None:
    h2load = shutil.which("h2load")
    if h2load is None:
        return None
    headers = [arg for name, value in HEADERS for arg in ("-H", f"{name}: {value}")]
    output = subprocess.run(
        [
            *("taskset", "-c", str(CLIENT_CORE), h2load, "-n", str(total)),
            *("-c", str(connections), "-m", "100", "-d", str(body_file), *headers),
            f"{base_url}/3/device/{TOKEN}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)
    return float(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=100, help="requests per request_many call")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--streams", type=int, default=1000, help="per connection, at most")
    parser.add_argument("--rounds", type=int, default=3, help="client runs; the median is kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = _write_tls(Path(tmp))
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(BODY)
        port = _free_port()
        base_url = f"https://127.0.0.1:{port}"
        sink = _start_sink(port, cert, key)
        try:
            os.sched_setaffinity(0, {CLIENT_CORE})
            runs = []
            for _ in range(args.rounds):
                runs.append(
                    asyncio.run(
                        _run_client(
                            base_url,
                            ca,
                            args.requests,
                            args.in_flight,
                            args.chunk,
                            args.connections,
                            args.streams,
                        )
                    )
                )
                rate, cpu_us, failures = runs[-1]
                print(f"  clarion.http2: {rate:9,.0f} req/s  {cpu_us:5.1f} µs CPU/request", end="")
                print(f"  ({failures} failures)")
                if failures:  # a rate over failed requests measures nothing
                    raise SystemExit(f"{failures} requests did not get a 200")
            rate, cpu_us, _ = sorted(runs)[len(runs) // 2]
            print(
                f"clarion.http2, {args.connections} connection(s) of at most {args.streams} "
                f"streams, {args.in_flight} in flight, "
                f"request_many({args.chunk}): median {rate:,.0f} req/s, {cpu_us:.1f} µs CPU/request"
            )
            for connections in (1, 4):
                ceiling = _h2load(base_url, args.requests, connections, body_file)
                shown = "h2load missing (apt-get install nghttp2-client)"
                if ceiling is not None:
                    shown = f"{ceiling:,.0f} req/s"
                print(f"h2load -c {connections} -m 100 (the ceiling): {shown}")
        finally:
            os.killpg(sink.pid, signal.SIGTERM)
            sink.wait(10)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
