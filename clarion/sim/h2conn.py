"""The simulators' second listener: HTTP/2 served by h2, for what granian cannot show.

granian (clarion/sim/server.py) fixes SETTINGS_MAX_CONCURRENT_STREAMS for every connection and
gives an app no way to drop one. Real providers do both: APNs allows 1 stream on a new
connection until it has answered a first request (it checks the provider token first), then
raises the limit; and connections die with requests on them. This listener runs in granian's
worker process, on its event loop, and hands each request to the same SimulatorApp, so it
serves the same APNs, FCM, Web Push and control API, on the same state, with those connection
behaviours (ConnectionRules, switched through `/_sim/connections`). It is pure Python: ~10x
the CPU of granian a request, so the throughput benchmarks stay on the main port.

See docs/simulators.md ("Connection behaviours").
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings

from clarion.sim.state import ConnectionRules

logger = logging.getLogger(__name__)

# h2 itself refuses a stream over its acknowledged limit with a connection error; the limit a
# connection advertises is enforced below with REFUSED_STREAM instead (RFC 9113 5.1.2), as a
# server does to a client that sent before it had read the server's SETTINGS.
_H2_OWN_LIMIT = 2**31 - 1


class _Headers(dict[str, str]):
    """Request headers as the handlers read them (clarion.sim.wire.Headers)."""


@dataclass(slots=True)
class Scope:
    """The part of granian's RSGI scope SimulatorApp reads."""

    path: str
    method: str
    headers: _Headers
    client: str
    authority: str | None
    query_string: str = ""
    proto: str = "http"
    http_version: str = "2"
    scheme: str = "https"


@dataclass(slots=True)
class _Exchange:
    """One request's body, read by the app, and the answer it writes."""

    body: bytes
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    answer: bytes = b""

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.answer = status, headers, body


Handler = Callable[[Scope, _Exchange], Awaitable[None]]


@dataclass(slots=True)
class _Stream:
    headers: _Headers
    method: str
    path: str
    authority: str | None
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler, rules: ConnectionRules) -> None:
        self._handler = handler
        self._rules = rules
        self._h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._streams: dict[int, _Stream] = {}
        self._answering = 0  # requests received whole and not answered yet
        self._limit = rules.initial_streams
        self._answered = False
        self._window_open = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername") or ("?", 0)
        self._client = f"{peer[0]}:{peer[1]}"
        self._rules.connections += 1
        h2 = self._h2
        h2.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: self._limit}
        )
        h2.initiate_connection()  # advertises self._limit
        h2.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: _H2_OWN_LIMIT}
        )
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._window_open.set()
        for task in self._tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except ProtocolError:
            self._flush()  # h2 queued a GOAWAY
            self._close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._open(event.stream_id, event.headers)
            elif isinstance(event, DataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self._received(event.stream_id)
            elif isinstance(event, StreamReset):
                self._streams.pop(event.stream_id, None)
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._window_open.set()
            elif isinstance(event, ConnectionTerminated):
                self._flush()
                self._close()
                return
        self._flush()

    def _open(self, stream_id: int, raw: Iterable[tuple[Any, Any]] | None) -> None:
        if len(self._streams) >= self._limit:
            # More streams than this connection allows (the client did not wait for SETTINGS).
            self._rules.refused_streams += 1
            self._h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        headers = _Headers()
        pseudo: dict[str, str] = {}
        for name, value in raw or ():
            if name.startswith(":"):
                pseudo[name] = value
            elif name in headers:
                headers[name] += ", " + value
            else:
                headers[name] = value
        self._streams[stream_id] = _Stream(
            headers,
            pseudo.get(":method", "GET"),
            pseudo.get(":path", "/"),
            pseudo.get(":authority"),
        )

    def _received(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        rate = self._rules.drop_rate
        drop = rate > 0 and random.random() < rate  # fault injection, not cryptography
        task = asyncio.get_running_loop().create_task(self._answer(stream_id, stream, drop=drop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, stream_id: int, stream: _Stream, *, drop: bool) -> None:
        path, _, query = stream.path.partition("?")
        scope = Scope(path, stream.method, stream.headers, self._client, stream.authority, query)
        exchange = _Exchange(bytes(stream.body))
        try:
            await self._handler(scope, exchange)
        except Exception:
            logger.exception("simulator handler failed")
            exchange.response_bytes(500, [], b"")
        if self._closed:
            return
        if drop:
            # The request was read and acted on (a push is recorded as delivered, as the real
            # provider may have delivered it); the answer is lost with the connection.
            self._rules.dropped += 1
            self._close()
            return
        h2 = self._h2
        headers = [(":status", str(exchange.status)), *exchange.headers]
        headers.append(("content-length", str(len(exchange.answer))))
        try:
            h2.send_headers(stream_id, headers, end_stream=not exchange.answer)
            body = exchange.answer
            while body:
                window = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
                if window <= 0:
                    self._flush()
                    self._window_open.clear()
                    await self._window_open.wait()
                    if self._closed:
                        return
                    continue
                h2.send_data(stream_id, body[:window], end_stream=len(body) <= window)
                body = body[window:]
        except H2Error:
            pass  # the client reset the stream (its timeout) or the connection went
        self._streams.pop(stream_id, None)
        if not self._answered:
            # APNs raises the limit once a connection has answered (its token checked).
            self._answered = True
            if self._limit < self._rules.streams:
                self._limit = self._rules.streams
                h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self._limit})
        self._flush()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._closed:
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.abort()  # no TLS close_notify, no GOAWAY: the connection just goes


class ConnectionListener:
    """The listener, started on granian's worker loop; its port is known before it accepts."""

    def __init__(self, host: str, cert: str, key: str, rules: ConnectionRules) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._context.set_alpn_protocols(["h2"])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self._socket.listen(1024)
        self._rules = rules
        port = self._socket.getsockname()[1]
        self.url = f"https://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}"
        self._server: asyncio.Server | None = None

    def start(self, loop: asyncio.AbstractEventLoop, handler: Handler) -> None:
        async def serve() -> None:
            self._server = await loop.create_server(
                lambda: _Connection(handler, self._rules), sock=self._socket, ssl=self._context
            )

        loop.create_task(serve())

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self._socket.close()
