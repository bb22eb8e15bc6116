"""A light HTTP/1.1 load generator: keep-alive connections, each posting the same body to its
own list of paths in turn, one request at a time (closed loop), on uvloop.

h2load starts each of its connections at the top of its one list of URIs, so its connections
call the same paths at the same moment; one h2load process per connection avoids that, at
~72 us of CPU per call against ~25 us for one process (measured beside bench/sdk_events.py on
this 2-core machine, where the load generator shares a core with PostgreSQL). This one costs
about as much as a single h2load and records each call's status, answer and latency.

Run by the benchmarks in a process of its own (`python -m bench.http_load SPEC OUT`): SPEC is a
JSON file {"host", "port", "body" (text), "headers", "connections": [[path, ...], ...],
"calls": [n, ...], "timeout" (seconds)}; OUT receives {"unanswered", "statuses",
"answers", "latencies_ms", "seconds" (from the first call sent to the last answer),
"cpu_seconds" (this process's, over the same run)}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, cast

import uvloop


class _Connection(asyncio.Protocol):
    def __init__(self, head: bytes, body: bytes, paths: list[str], calls: int) -> None:
        self.head, self.body, self.paths, self.left = head, body, paths, calls
        self.sent = 0
        self.buffer = b""
        self.started = 0.0
        self.statuses: Counter[int] = Counter()
        self.answers: Counter[bytes] = Counter()
        self.latencies: list[float] = []
        self.first_sent = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.first_sent = time.perf_counter()
        self._send()

    def _send(self) -> None:
        if self.left == 0:
            assert self.transport is not None
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        path = self.paths[self.sent % len(self.paths)]
        self.sent += 1
        self.left -= 1
        assert self.transport is not None
        self.started = time.perf_counter()
        self.transport.write(b"POST %s HTTP/1.1\r\n%s%s" % (path.encode(), self.head, self.body))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end == -1:
            return
        headers = self.buffer[: end + 2].lower()  # each header line ends with CRLF
        at = headers.find(b"\r\ncontent-length:")
        length = int(headers[at + 17 : headers.find(b"\r\n", at + 2)]) if at != -1 else 0
        if len(self.buffer) < end + 4 + length:
            return
        self.latencies.append((time.perf_counter() - self.started) * 1000)
        self.statuses[int(self.buffer[9:12])] += 1
        self.answers[self.buffer[end + 4 : end + 4 + length]] += 1
        self.buffer = self.buffer[end + 4 + length :]
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        # Closed by the server with calls left (after an error answer, say): they are counted
        # unanswered, for the benchmark to say so.
        if self.started and len(self.latencies) < self.sent:
            self.left += 1  # the call in flight
        if not self.done.done():
            self.done.set_result(None)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    body = spec["body"].encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in spec["headers"].items())
    head += f"Host: {spec['host']}:{spec['port']}\r\nContent-Length: {len(body)}\r\n\r\n"
    loop = asyncio.get_running_loop()
    connections = []
    for paths, calls in zip(spec["connections"], spec["calls"], strict=True):
        _, protocol = await loop.create_connection(
            partial(_Connection, head.encode(), body, paths, calls), spec["host"], spec["port"]
        )
        connections.append(protocol)
    # A server that stops answering fails the run instead of hanging it.
    await asyncio.wait_for(asyncio.gather(*(c.done for c in connections)), spec["timeout"])
    last = max(c.started + c.latencies[-1] / 1000 for c in connections if c.latencies)
    statuses: Counter[int] = sum((c.statuses for c in connections), Counter())
    answers: Counter[bytes] = sum((c.answers for c in connections), Counter())
    return {
        "unanswered": sum(c.left for c in connections),
        "statuses": {str(status): n for status, n in statuses.items()},
        "answers": {answer.decode(errors="replace"): n for answer, n in answers.items()},
        "latencies_ms": [latency for c in connections for latency in c.latencies],
        "seconds": last - min(c.first_sent for c in connections),
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    cpu = time.process_time()
    result = uvloop.run(run(spec))
    result["cpu_seconds"] = time.process_time() - cpu
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
