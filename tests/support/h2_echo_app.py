"""A tiny RSGI app for tests of clarion.http2: it echoes what it received, as JSON.

Served by granian in a subprocess (see tests/test_http2.py). Paths:
- `/status/<code>`: answers <code> with `retry-after: 7` and an `x-echo` JSON header.
- `/slow/<ms>`: waits <ms> milliseconds, then echoes; counts streams in flight per connection.
- `/_stats`: the peak number of streams in flight on one connection, the number in flight now,
  and every client address seen.
- `/_reset`: forgets those statistics.
- anything else: `{"method", "path", "query", "http_version", "client", "headers", "body"}`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

_clients: set[str] = set()
_in_flight: Counter[str] = Counter()
_peak_in_flight = 0


def _echo(scope: Any, body: bytes) -> dict[str, Any]:
    return {
        "method": scope.method,
        "path": scope.path,
        "query": scope.query_string,
        "http_version": scope.http_version,
        "client": scope.client,
        "headers": [[name, value] for name, value in scope.headers.items()],
        "body": body.decode("latin-1"),
    }


async def app(scope: Any, proto: Any) -> None:
    global _peak_in_flight
    if scope.proto != "http":
        return
    body = await proto()
    path: str = scope.path
    if path == "/_stats":
        stats = {
            "peak_in_flight": _peak_in_flight,
            "in_flight": sum(_in_flight.values()),
            "clients": sorted(_clients),
        }
        proto.response_bytes(
            200, [("content-type", "application/json")], json.dumps(stats).encode()
        )
        return
    if path == "/_reset":
        _clients.clear()
        _peak_in_flight = 0
        proto.response_empty(204, [])
        return
    _clients.add(scope.client)
    echo = json.dumps(_echo(scope, body)).encode()
    if path.startswith("/status/"):
        headers = [("retry-after", "7"), ("x-echo", echo.decode("latin-1"))]
        proto.response_bytes(int(path.removeprefix("/status/")), headers, b"")
        return
    if path.startswith("/slow/"):
        _in_flight[scope.client] += 1
        _peak_in_flight = max(_peak_in_flight, _in_flight[scope.client])
        try:
            await asyncio.sleep(int(path.removeprefix("/slow/")) / 1000)
        finally:
            _in_flight[scope.client] -= 1
    proto.response_bytes(200, [("content-type", "application/json"), ("x-app", "echo")], echo)
