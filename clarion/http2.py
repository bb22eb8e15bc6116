"""The shared HTTP/2 client of a worker process: libcurl's multi interface driven by asyncio.

Why libcurl, and why on the event loop rather than in a thread: docs/decisions/0002-http2-client.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pycurl

__all__ = ["AddressCheck", "Http2Client", "HttpRequest", "HttpResponse", "TransportError"]

logger = logging.getLogger(__name__)


class AddressCheck(Protocol):
    """Why a connection to `address` is refused, or None (clarion.outbound.AddressGuard)."""

    def refusal(self, address: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    # Read when the request starts. One headers tuple shared by a batch is the fast path: a pooled
    # handle keeps its libcurl header list when the headers equal its previous request's.
    headers: Sequence[tuple[str, str]]
    body: bytes = b""
    # For destinations users chose (Web Push endpoints, an FCM account's token_uri): checked
    # on each address a connection for this request is opened to, not per request.
    guard: AddressCheck | None = None
    # A header of this request alone, sent after `headers` (APNs' apns-id, one per device): the
    # shared headers' lines stay built and checked on the pooled handle, and only this one is
    # formatted per request (a header list rebuilt whole cost ~4.5 µs a request).
    own_header: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    # Seconds from the request being written on a stream to its answer: the server's latency
    # (the provider latency metric), without the time it waited for a free stream.
    elapsed: float = 0.0


class TransportError(Exception):
    """No HTTP answer: connection refused or reset, TLS failure, timeout, GOAWAY, client closed.

    `written` says whether the server may have acted on the request: True once libcurl had
    attached it to a stream (CURLOPT_PREREQFUNCTION ran), whatever came after (no answer within
    the response timeout, the connection dropped mid-stream); False when it never got that far
    (DNS, connect or TLS failure or timeout, refused by the guard, invalid, client closed first).
    A stream the server refused (REFUSED_STREAM, or above a GOAWAY's last stream id) is re-sent
    by libcurl itself and reaches the caller only as the re-sent request's outcome.
    """

    def __init__(
        self, message: str, *, curl_code: int = 0, refused: bool = False, written: bool = False
    ) -> None:
        super().__init__(message)
        self.curl_code = curl_code  # libcurl's CURLE_* code, 0 when the error is not libcurl's
        self.refused = refused  # the request's guard refused the address: no point retrying
        # The request was written on a stream before the error: the server may have acted on it
        # (its outcome is unknown). False when it never left (connect or TLS failure).
        self.written = written


# libcurl error codes grouped by what a caller may want to know; the message keeps libcurl's text.
_ERROR_KINDS: dict[int, str] = {
    1: "unsupported protocol",
    3: "malformed URL",
    6: "DNS resolution failed",
    7: "connection failed (refused or unreachable)",
    16: "HTTP/2 protocol error",
    18: "connection closed mid-response",
    28: "timeout",
    35: "TLS handshake failed",
    52: "connection closed without an answer (GOAWAY or restart)",
    55: "connection lost while sending (reset)",
    56: "connection lost while receiving (reset)",
    58: "TLS client certificate problem",
    60: "TLS certificate not trusted",
    77: "TLS CA file unreadable",
    90: "TLS pinned public key mismatch",
    92: "HTTP/2 stream reset or refused (GOAWAY)",
}

# Errors after which an origin counts as cold again: the next request to it probes alone.
_CONNECTION_ERRORS = frozenset({7, 16, 35, 52, 55, 56, 92})
# Errors of a request that never left which say the origin cannot be reached at all (DNS,
# connect, TLS, a connection lost while being set up): when nothing of the origin's is on a
# stream, every request to it waiting for a connection fails with it (see _fail_origin).
_UNREACHABLE_ERRORS = _CONNECTION_ERRORS | {6, 28, 58, 60, 77, 90}

# Sent first in every header list: an empty value removes libcurl's default header, and a caller's
# own header of the same name still wins. libcurl would otherwise add `Accept: */*`, a form
# content type to every POST, and `Expect: 100-continue` to large HTTP/1.1 bodies (a 1 s stall).
_DEFAULT_HEADERS_OFF = ("Accept:", "Content-Type:", "Expect:")

# Requests of one origin handed to libcurl but not yet on a stream: waiting for a connection being
# set up, or for a stream the server's SETTINGS_MAX_CONCURRENT_STREAMS does not allow yet. The rest
# wait in the client's own backlog. libcurl learns a server's stream limit and keeps it; it does
# not say it. Holding back all but this many keeps libcurl's own queue short whatever the limit:
# a server allowing 1 stream (APNs before it has checked the token) or 10 sees at most this many
# requests waiting inside libcurl, where each costs ~22 KiB and CPU on every stream released.
# 2 x 1,000 streams still fill in a few loop iterations (bench/http2_client.py: see decision 0030).
_WAITING_FOR_A_STREAM = 200

_POLL_IN = pycurl.POLL_IN
_POLL_OUT = pycurl.POLL_OUT
_POLL_REMOVE = pycurl.POLL_REMOVE


def _system_ca_options() -> list[tuple[int, str]]:
    # The pycurl wheel's libcurl looks for /etc/pki/tls/certs/ca-bundle.crt (where it was built);
    # on Debian that file does not exist and every certificate would be rejected. Python's OpenSSL
    # knows this system's store (and honours SSL_CERT_FILE / SSL_CERT_DIR).
    paths = ssl.get_default_verify_paths()
    options = []
    if paths.cafile:
        options.append((pycurl.CAINFO, paths.cafile))
    if paths.capath:
        options.append((pycurl.CAPATH, paths.capath))
    return options


def _no_loop() -> float:
    raise RuntimeError("Http2Client is bound to no event loop yet")


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.decode("latin-1").partition(":")
        if colon:
            key = name.strip().lower()
            value = value.strip()
            if key in headers:
                headers[key] += ", " + value
            else:
                headers[key] = value
        elif line.startswith(b"HTTP/"):
            headers = {}  # a new response begins (after a 1xx): keep the final one only
    return headers


class _Headers(Mapping[str, str]):
    """Response headers, parsed on first use: ~2 µs a response that most callers never spend
    (an APNs 200 is read for its status alone)."""

    __slots__ = ("_lines", "_parsed")

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines
        self._parsed: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        if self._parsed is None:
            self._parsed = _parse_headers(self._lines)
            self._lines = []
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())


class _Batch:
    """The requests of one request_many call: one future for all, not one per request."""

    __slots__ = ("future", "remaining", "results")

    def __init__(self, future: asyncio.Future[list[HttpResponse | TransportError]], n: int) -> None:
        self.future = future
        self.remaining = n
        self.results: list[Any] = [None] * n

    def settle(self, index: int, result: HttpResponse | TransportError) -> None:
        self.results[index] = result
        self.remaining -= 1
        if not self.remaining and not self.future.done():
            self.future.set_result(self.results)


_Queued = tuple[_Batch, int, HttpRequest, str]  # a request waiting to start, with its origin

# A connection, as libcurl's PREREQFUNCTION names it: (server address, server port, local port).
# pycurl refuses getinfo(CONN_ID) inside a callback. A later connection could reuse the same local
# port and pass for proven: it then gets what every connection got before slow start, no worse.
_Conn = tuple[str, int, int]
_PREREQ_OK: int = pycurl.PREREQFUNC_OK
_PREREQ_ABORT: int = pycurl.PREREQFUNC_ABORT
_ABORTED_BY_CALLBACK = 42  # CURLE_ABORTED_BY_CALLBACK: what a PREREQ abort fails the transfer with


_UNSET = object()  # a handle option whose value is not known: set by the next request


def _check_lines(lines: Iterable[str]) -> None:
    if any("\n" in line or "\r" in line for line in lines):
        raise ValueError("header names and values must not contain line breaks")


class _Transfer:
    """A pooled easy handle with its response buffers (a new one costs ~20 setopt calls)."""

    __slots__ = (
        "added_at",
        "batch",
        "body_chunks",
        "clock",
        "curl",
        "deferred",
        "guard",
        "header_lines",
        "header_list",
        "headers",
        "index",
        "odd_method",
        "opened_at",
        "opening",
        "origin",
        "own_header",
        "posted",
        "probe",
        "refusal",
        "request",
        "trial_conn",
        "written_at",
    )

    def __init__(
        self,
        options: Sequence[tuple[int, Any]],
        on_written: Callable[[_Transfer, str, str, int, int], int],
        clock: Callable[[], float],
    ) -> None:
        self.curl = pycurl.Curl()
        self.header_lines: list[bytes] = []
        self.body_chunks: list[bytes] = []
        # Bound list.append as callbacks: no Python frame per header line or body chunk.
        self.curl.setopt(pycurl.HEADERFUNCTION, self.header_lines.append)
        self.curl.setopt(pycurl.WRITEFUNCTION, self.body_chunks.append)
        # Called once per connection libcurl opens (not per request), with the address it is
        # about to connect to: IP literals, every resolved address and happy-eyeballs tries.
        self.curl.setopt(pycurl.OPENSOCKETFUNCTION, self._open_socket)
        # Called when libcurl has a stream for the request and is about to send it (once per
        # attempt: a stream the server refused is sent again and calls it again). The response
        # clock starts here, not when the request was handed to libcurl. A partial rather than a
        # method of this object: one Python frame per request, not two.
        self.clock = clock
        self.curl.setopt(pycurl.PREREQFUNCTION, functools.partial(on_written, self))
        self.guard: AddressCheck | None = None
        self.refusal: str | None = None
        for option, value in options:
            self.curl.setopt(option, value)
        # What HTTPHEADER holds now: the shared headers, their lines (checked) and the own
        # header after them (_UNSET: unknown, set again by the next request).
        self.headers: tuple[tuple[str, str], ...] | None = None
        self.header_list: list[str] = []
        self.own_header: object = _UNSET  # tuple[str, str], None or _UNSET
        # The body POSTFIELDS holds while the method is a plain POST (None: set it again).
        self.posted: bytes | None = None
        self.odd_method = False  # CUSTOMREQUEST or NOBODY set by the previous request
        self.batch: _Batch | None = None
        self.index = 0
        self.origin = ""
        self.probe = False  # the first request to a cold origin, sent alone
        self.added_at = 0.0  # loop time it was handed to libcurl
        self.opened_at = 0.0  # loop time it opened a connection of its own (0: none yet)
        # That connection's socket, kept until the connect timeout to ask the kernel whether TCP
        # is up (getpeername): libcurl's CONNECT_TIME stays 0 until its TLS handshake is done too.
        self.opening: socket.socket | None = None
        self.written_at = 0.0  # loop time libcurl put it on a stream (0: not yet)
        self.request: HttpRequest | None = None
        self.trial_conn: _Conn | None = None  # the new connection it is the first request on
        self.deferred = False  # held back from a connection on trial: re-queued, never sent

    def _open_socket(self, purpose: int, address: Any) -> Any:
        family, socktype, protocol, sockaddr = address
        guard = self.guard
        if guard is not None:
            refusal = guard.refusal(str(sockaddr[0]))
            if refusal is not None:
                self.refusal = refusal
                return pycurl.SOCKET_BAD  # libcurl fails the transfer: CURLE_COULDNT_CONNECT
        # pycurl hands libcurl a duplicate of the descriptor; this object closes its own once
        # the connect timeout has been checked (or the transfer ends).
        sock = socket.socket(family, socktype, protocol)
        self.forget_socket()
        self.opening = sock
        self.opened_at = self.clock()
        return sock

    def forget_socket(self) -> None:
        if self.opening is not None:
            self.opening.close()
            self.opening = None

    def prepare(self, request: HttpRequest) -> None:
        curl = self.curl
        self.request = request
        self.guard = request.guard
        curl.setopt(pycurl.URL, request.url)
        headers = request.headers
        if type(headers) is not tuple:
            headers = tuple(headers)
        own = request.own_header
        if headers is not self.headers and headers != self.headers:
            self.headers = None  # stays unknown if a header is rejected below
            self.own_header = _UNSET
            lines = [*_DEFAULT_HEADERS_OFF, *[f"{name}: {value}" for name, value in headers]]
            _check_lines(lines)
            self.header_list = lines
            self.headers = headers
        if own != self.own_header:
            self.own_header = _UNSET  # stays unknown if the header is rejected below
            if own is None:
                curl.setopt(pycurl.HTTPHEADER, self.header_list)
            else:
                line = f"{own[0]}: {own[1]}"
                _check_lines((line,))
                curl.setopt(pycurl.HTTPHEADER, [*self.header_list, line])
            self.own_header = own
        if self.odd_method:
            curl.unsetopt(pycurl.CUSTOMREQUEST)
            curl.setopt(pycurl.NOBODY, 0)
            self.odd_method = False
            self.posted = None
        method = request.method
        body = request.body
        if method == "POST":
            # A batch's requests share one body object: set once per pooled handle while it
            # stays a plain POST (~1 µs a request). pycurl keeps a reference, no copy.
            if body is not self.posted:
                self.posted = None
                curl.setopt(pycurl.POSTFIELDS, body)
                self.posted = body
        elif method == "GET" and not body:
            self.posted = None
            curl.setopt(pycurl.HTTPGET, 1)
        else:
            self.posted = None
            self.odd_method = True
            if method == "HEAD":
                curl.setopt(pycurl.NOBODY, 1)
                return
            curl.setopt(pycurl.CUSTOMREQUEST, method)
            if body:
                curl.setopt(pycurl.POSTFIELDS, body)
            else:
                curl.setopt(pycurl.HTTPGET, 1)


class Http2Client:
    """One per worker process, shared by every provider, open as long as the process runs.

    Requests to one host multiplex as streams over at most max_connections_per_host connections
    (HTTP/2 over TLS; HTTP/1.1 for http:// URLs and servers whose ALPN refuses h2). libcurl follows
    the server's SETTINGS_MAX_CONCURRENT_STREAMS, and re-connects after GOAWAY or a reset.
    The client binds to the event loop of its first request.
    """

    def __init__(
        self,
        *,
        ca_file: str | None = None,
        max_connections_per_host: int = 2,
        max_concurrent_streams: int = 1000,
        connect_timeout: float = 10.0,
        tls_timeout: float = 10.0,
        response_timeout: float = 30.0,
    ) -> None:
        """Timeouts, in seconds (docs/delivery.md, "Timeouts"; decision 0030):
        - connect: from opening a TCP connection to it being established;
        - tls: from then to the end of the TLS handshake;
        - response: from the request being written on a stream to the end of its answer. Time a
          request waits for a connection or a free stream does not count: it is bounded by the
          timeouts of the connection being set up and of the requests ahead of it.
        """
        ca_options = [(pycurl.CAINFO, ca_file)] if ca_file else _system_ca_options()
        self._handle_options: list[tuple[int, Any]] = [
            (pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS),
            # Wait for a connection being set up to say whether it multiplexes rather than open
            # one per request: without it 1,000 requests at start open up to 1,000 connections.
            (pycurl.PIPEWAIT, 1),
            (pycurl.NOSIGNAL, 1),
            (pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS),  # no file://, gopher://…
            # libcurl has one clock for TCP and TLS together: it caps the sum, and the client's
            # own check (_sweep) holds each part to its own timeout. No CURLOPT_TIMEOUT: it counts
            # from the moment a request is handed to libcurl, including the wait for a free
            # stream, so a provider answering in 15 s behind a low stream limit timed requests
            # out that it then answered (10,000 recipients got 12,000 pushes; issue 22).
            (pycurl.CONNECTTIMEOUT_MS, round((connect_timeout + tls_timeout) * 1000)),
            *ca_options,
            (pycurl.USERAGENT, "clarion"),
            # libcurl gives each transfer a 64 KiB send buffer by default: 55 KiB of RSS per request
            # in flight, 1.2 GB for 20,000. The 16 KiB minimum holds any push payload (APNs 4 KiB,
            # FCM and Web Push 4 KiB) and cuts that to ~22 KiB at no measurable speed cost.
            (pycurl.UPLOAD_BUFFERSIZE, 16384),
            # Connections live long (APNs asks senders to keep them open); keepalive probes after
            # 60 s idle find a peer that vanished, and an idle connection is kept 10 minutes
            # (libcurl's default of 118 s would re-handshake after every pause between campaigns).
            (pycurl.TCP_KEEPALIVE, 1),
            (pycurl.TCP_KEEPIDLE, 60),
            (pycurl.TCP_KEEPINTVL, 15),
            (pycurl.MAXAGE_CONN, 600),
        ]
        multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        # Defaults, 2 connections of at most 1,000 streams: up to 2,000 requests in flight per
        # origin, which a distant server needs (throughput <= in flight / round trip), on few
        # connections. Each new connection is a risk: until its SETTINGS arrive libcurl assumes
        # 100 streams on it, and a server allowing fewer refuses the excess (8 x 250 lost 22 of
        # 800 requests to a 10-stream server, tests/test_http2.py). Measured on PostgreSQL,
        # delivery of 200k (bench/delivery_throughput.py): against a simulator answering 50 ms
        # late 2 x 1,000 17.2k/s, 8 x 250 17.0k/s, 4 x 250 13.2k/s; answering at once all
        # within 21.1-22.6k/s.
        multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, max_connections_per_host)
        # libcurl caps streams per connection at 100 unless told otherwise; the server's own
        # SETTINGS_MAX_CONCURRENT_STREAMS still applies when it is lower.
        multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, max_concurrent_streams)
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._multi = multi
        # Requests beyond what an origin's connections can carry at once wait in _backlog, not
        # inside libcurl: each transfer handed to libcurl holds ~22 KiB and its timeout clock
        # starts, and libcurl's own queue of transfers waiting for a stream costs CPU (measured
        # with bench/http2_client.py, 2 connections of 1,000 streams: 4,000 in flight cost
        # 45-50 µs per request, 2,000 cost 38-42 µs). Overall, twice one origin's capacity lets
        # two origins (APNs and FCM in one worker) run at full speed.
        self._origin_capacity = max_connections_per_host * max_concurrent_streams
        self._max_in_flight = 2 * self._origin_capacity
        self._running: dict[str, int] = defaultdict(int)  # origin -> transfers in libcurl
        self._written: dict[str, int] = defaultdict(int)  # origin -> of those, on a stream
        self._connect_timeout = connect_timeout
        self._tls_timeout = tls_timeout
        self._response_timeout = response_timeout
        # The timeouts are checked by one timer for all transfers (_sweep), woken at the first
        # deadline but at most every 1/20 of the shortest timeout: a request times out up to 5 %
        # late (1.5 s of 30 s), and a sweep over 4,000 transfers in flight costs ~0.5 ms.
        self._sweep_every = min(connect_timeout, tls_timeout, response_timeout) / 20
        self._check: asyncio.TimerHandle | None = None
        self._check_when = 0.0
        # Slow start per connection, as per origin (_probing) but for each connection libcurl
        # opens later (a second one when the first is full, a new one after GOAWAY): until its
        # SETTINGS arrive libcurl assumes 100 streams on it, and a server allowing fewer
        # refuses the excess, after which libcurl drops the connection and retries elsewhere
        # (measured: 800 requests to a 10-stream server opened 11 connections and 11 failed
        # after 5 retries). So a new connection carries one request (its trial) until it has
        # answered; a request libcurl puts beside it is stopped before it is sent (the
        # PREREQFUNCTION aborts it) and waits in the backlog, and the origin's backlog waits
        # for the trial's answer.
        self._proven: set[_Conn] = set()  # connections that have answered a request
        self._trials: dict[_Conn, _Transfer] = {}  # new connection -> its first request, pending
        self._held: set[str] = set()  # origins waiting for a trial to end
        self._backlog: dict[str, deque[_Queued]] = {}  # origin -> requests waiting, in order
        # Slow start per origin ("https://host:port"). Until the server's first SETTINGS frame
        # arrives libcurl assumes 100 streams per connection and opens that many at once; a
        # server allowing fewer (APNs allows 1 until it has checked the token) refuses the rest,
        # and libcurl then drops the connection and retries on new ones: measured against a
        # 10-stream server, 200 requests opened 9 connections and 19 failed after 5 retries.
        # So the first request to a cold origin goes alone and the others wait for its answer.
        self._warm: set[str] = set()
        self._probing: dict[str, list[_Queued]] = {}  # cold origin -> requests waiting
        self._idle: list[_Transfer] = []
        self._active: dict[Any, _Transfer] = {}  # pycurl.Curl -> its transfer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._time: Callable[[], float] = _no_loop  # the loop's clock, once bound to one
        # uvloop's call_at returns a handle without .when(), so the deadline is kept beside it.
        self._timer: asyncio.Handle | None = None
        self._timer_when = 0.0
        self._watched: dict[int, int] = {}  # socket -> POLL_* events registered with the loop
        self._closed = False

    async def request(self, request: HttpRequest) -> HttpResponse:
        (result,) = await self.request_many((request,))
        if isinstance(result, TransportError):
            raise result
        return result

    async def request_many(
        self, requests: Sequence[HttpRequest]
    ) -> list[HttpResponse | TransportError]:
        """All requests concurrently; results in the same order. Never raises per request."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                raise RuntimeError("Http2Client is bound to another event loop")
            self._loop = loop
            self._time = loop.time
        if self._closed:
            return [TransportError("client closed") for _ in requests]
        if not requests:
            return []
        batch = _Batch(loop.create_future(), len(requests))
        warm = self._warm
        for index, request in enumerate(requests):
            url = request.url
            end = url.find("/", 8)  # past "https://"
            origin = url if end < 0 else url[:end]
            if origin in warm:
                if origin not in self._backlog and self._has_room(origin):
                    self._start(batch, index, request, origin)
                else:
                    self._wait((batch, index, request, origin))
            elif origin in self._probing:
                self._probing[origin].append((batch, index, request, origin))
            else:
                self._probing[origin] = []
                self._start(batch, index, request, origin, probe=True)
        try:
            return await batch.future
        except asyncio.CancelledError:
            self._abandon(batch)
            raise

    async def aclose(self) -> None:
        """Fail pending requests with TransportError, close connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._check is not None:
            self._check.cancel()
            self._check = None
        multi = self._multi
        error = TransportError("client closed before an answer came")
        for curl, transfer in list(self._active.items()):
            multi.remove_handle(curl)
            if transfer.batch is not None:
                transfer.batch.settle(transfer.index, error)
        for waiting in [*self._backlog.values(), *self._probing.values()]:
            for batch, index, _, _ in waiting:
                batch.settle(index, error)
        self._backlog.clear()
        self._probing.clear()
        for transfer in [*self._active.values(), *self._idle]:
            transfer.curl.close()
        self._active.clear()
        self._idle.clear()
        multi.close()  # closes the connections; their sockets leave the loop via _on_socket
        for fd in list(self._watched):
            self._on_socket(_POLL_REMOVE, fd, None, None)

    def _start(
        self, batch: _Batch, index: int, request: HttpRequest, origin: str, probe: bool = False
    ) -> None:
        transfer = (
            self._idle.pop()
            if self._idle
            else _Transfer(self._handle_options, self._on_written, self._now)
        )
        try:
            transfer.prepare(request)
            transfer.added_at = now = self._time()
            self._multi.add_handle(transfer.curl)
        except (pycurl.error, TypeError, ValueError) as exc:
            self._idle.append(transfer)
            batch.settle(index, TransportError(f"invalid request ({request.url}): {exc}"))
            if probe:
                self._end_probe(origin, warm=False)
                self._refill()  # nothing in flight to the origin would otherwise start them
            return
        transfer.batch = batch
        transfer.index = index
        transfer.origin = origin
        transfer.probe = probe
        self._active[transfer.curl] = transfer
        self._running[origin] += 1
        due = now + self._connect_timeout
        if due < self._check_when or self._check is None:
            self._check_by(due)

    def _has_room(self, origin: str) -> bool:
        running = self._running[origin]
        return (
            origin not in self._held
            and running < self._origin_capacity
            and running - self._written[origin] < _WAITING_FOR_A_STREAM
            and len(self._active) < self._max_in_flight
        )

    def _now(self) -> float:
        return self._time()

    def _on_written(
        self,
        transfer: _Transfer,
        primary_ip: str,
        local_ip: str,
        primary_port: int,
        local_port: int,
    ) -> int:
        # Inside libcurl's socket_action, once per request: bookkeeping only, no call into
        # libcurl, and kept short (~2 µs of Python a request was spent here).
        conn = (primary_ip, primary_port, local_port)
        if conn not in self._proven:
            trial = self._trials.get(conn)
            if trial is None:
                self._end_trial(transfer)  # re-sent after a refusal, on another connection
                self._trials[conn] = transfer
                transfer.trial_conn = conn
            elif trial is not transfer:
                transfer.deferred = True
                self._held.add(transfer.origin)
                return _PREREQ_ABORT
        now = self._time()
        if not transfer.written_at:
            self._written[transfer.origin] += 1
        transfer.written_at = now
        due = now + self._response_timeout
        if due < self._check_when or self._check is None:
            self._check_by(due)
        return _PREREQ_OK

    def _end_trial(self, transfer: _Transfer) -> None:
        conn = transfer.trial_conn
        if conn is not None:
            transfer.trial_conn = None
            if self._trials.get(conn) is transfer:
                del self._trials[conn]
            self._held.discard(transfer.origin)

    def _check_by(self, when: float) -> None:
        # Deadlines are mostly added in increasing order: one comparison a request.
        check = self._check
        if check is None or when < self._check_when:
            if check is not None:
                check.cancel()
            loop = self._loop
            assert loop is not None
            self._check = loop.call_at(when, self._sweep)
            self._check_when = when

    def _sweep(self) -> None:
        """Fail the transfers past a deadline: written and unanswered past the response timeout,
        or opening a connection past the connect or TLS timeout."""
        self._check = None
        if self._closed:
            return
        now = self._now()
        due_next = float("inf")
        expired: list[tuple[_Transfer, str]] = []  # with what timed out
        for transfer in self._active.values():
            if transfer.written_at:
                due = transfer.written_at + self._response_timeout
                what = "response"
            elif transfer.opening is not None:
                due = transfer.opened_at + self._connect_timeout
                what = "connect"
                if due <= now:
                    try:
                        transfer.opening.getpeername()
                    except OSError:
                        pass  # not connected: expired below
                    else:
                        # TCP is up: the TLS handshake has what is left of libcurl's cap on the
                        # connection phase (connect + TLS timeouts), at least the TLS timeout.
                        transfer.forget_socket()
                        continue
            else:
                continue  # waiting for a connection another transfer opens, or for a stream
            if due <= now:
                expired.append((transfer, what))
            elif due < due_next:
                due_next = due
        for transfer, what in expired:
            self._expire(transfer, what)
        if due_next != float("inf"):
            self._check_by(max(due_next, now + self._sweep_every))
        if expired:
            self._refill()

    def _expire(self, transfer: _Transfer, what: str) -> None:
        batch, index, origin = transfer.batch, transfer.index, transfer.origin
        curl = transfer.curl
        written = bool(transfer.written_at)
        url = curl.getinfo(pycurl.EFFECTIVE_URL)
        if written:
            message = (
                f"timeout: no answer within {self._response_timeout:g} s of the request being"
                f" written ({url})"
            )
        else:
            message = f"timeout: TCP connect not done within {self._connect_timeout:g} s ({url})"
        # Removing a transfer on a stream resets the stream (RST_STREAM CANCEL), freeing the slot.
        self._release(curl, transfer)
        if batch is not None:
            batch.settle(index, TransportError(message, curl_code=28, written=written))
        if not written:
            self._fail_origin(origin, message, 28)

    def _fail_origin(self, origin: str, message: str, code: int) -> None:
        """A connection to `origin` could not be set up. Unless some of its requests are on a
        stream (another connection works), fail every request waiting to be written to it:
        libcurl would otherwise let them try one or two at a time, each after the previous
        attempt's connect timeout (1,000 requests, 2 connections, 10 s: 83 minutes)."""
        self._warm.discard(origin)
        if self._written[origin]:
            return
        waiting: list[tuple[_Batch | None, int]] = []
        for curl, transfer in list(self._active.items()):
            if transfer.origin == origin and not transfer.written_at:
                waiting.append((transfer.batch, transfer.index))
                self._release(curl, transfer)
        for queued in [*self._backlog.pop(origin, ()), *self._probing.pop(origin, ())]:
            waiting.append((queued[0], queued[1]))
        for batch, index in waiting:
            if batch is not None:
                batch.settle(index, TransportError(message, curl_code=code))

    def _wait(self, queued: _Queued) -> None:
        origin = queued[3]
        waiting = self._backlog.get(origin)
        if waiting is None:
            waiting = self._backlog[origin] = deque()
        waiting.append(queued)

    def _end_probe(self, origin: str, *, warm: bool) -> None:
        # After an answer libcurl knows the server's stream limit: release the waiting requests.
        # After a failure release them too, each to meet its own fate (probing them one by one
        # would take their number times the connect timeout against an unreachable host); the
        # origin stays cold, so the next new request probes again.
        if warm:
            self._warm.add(origin)
        released = self._probing.pop(origin, [])
        if released:
            self._backlog.setdefault(origin, deque()).extendleft(reversed(released))

    def _abandon(self, batch: _Batch) -> None:
        # The caller was cancelled: stop its transfers so they hold no stream slot.
        for curl, transfer in list(self._active.items()):
            if transfer.batch is batch:
                self._release(curl, transfer)
        for origin, queue in list(self._backlog.items()):
            kept = deque(queued for queued in queue if queued[0] is not batch)
            if kept:
                self._backlog[origin] = kept
            else:
                del self._backlog[origin]
        for origin, waiting in self._probing.items():
            self._probing[origin] = [queued for queued in waiting if queued[0] is not batch]
        self._refill()

    def _release(self, curl: Any, transfer: _Transfer) -> None:
        del self._active[curl]
        self._running[transfer.origin] -= 1
        if transfer.written_at:
            self._written[transfer.origin] -= 1
            transfer.written_at = 0.0
        transfer.opened_at = 0.0
        transfer.forget_socket()
        if transfer.trial_conn is not None:
            self._end_trial(transfer)
        transfer.request = None
        self._multi.remove_handle(curl)
        transfer.header_lines.clear()
        transfer.body_chunks.clear()
        transfer.batch = None
        transfer.refusal = None
        if transfer.probe:
            transfer.probe = False
            if transfer.origin in self._probing:  # not when the probe was abandoned
                self._end_probe(transfer.origin, warm=False)
        self._idle.append(transfer)

    # --- libcurl <-> asyncio: libcurl says which sockets and when to wake it, the loop does it.

    def _on_socket(self, what: int, fd: int, multi: Any, socketp: Any) -> None:
        loop = self._loop
        assert loop is not None
        old = self._watched.get(fd, 0)
        new = 0 if what == _POLL_REMOVE else what
        if (old ^ new) & _POLL_IN:
            if new & _POLL_IN:
                loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
            else:
                loop.remove_reader(fd)
        if (old ^ new) & _POLL_OUT:
            if new & _POLL_OUT:
                loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)
            else:
                loop.remove_writer(fd)
        if new:
            self._watched[fd] = new
        else:
            self._watched.pop(fd, None)

    def _on_timer(self, timeout_ms: int) -> None:
        # libcurl calls this about once per request (every add_handle moves its next deadline).
        # Re-arming only when the deadline moves earlier saves a cancel + call_at (~2 µs) per
        # request; an armed timer that fires early is harmless (see _on_timeout), and -1
        # ("no timer") can be ignored for the same reason.
        if timeout_ms < 0 or self._closed:
            return
        loop = self._loop
        assert loop is not None
        when = loop.time() + timeout_ms / 1000
        timer = self._timer
        if timer is None or when < self._timer_when:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(when, self._on_timeout)
            self._timer_when = when

    def _on_timeout(self) -> None:
        self._timer = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)
        if self._timer is None and not self._closed:
            # libcurl only calls _on_timer when its next deadline changes; after an early wake-up
            # it does not, so ask it.
            timeout_ms = self._multi.timeout()
            if timeout_ms >= 0:
                self._on_timer(timeout_ms)

    def _act(self, fd: int, event: int) -> None:
        if self._closed:
            return
        try:
            self._multi.socket_action(fd, event)
        except pycurl.error:
            logger.exception("libcurl socket_action failed")
        self._collect()

    def _collect(self) -> None:
        multi = self._multi
        active = self._active
        now = self._now()
        while True:
            queued, succeeded, failed = multi.info_read()
            for curl in succeeded:
                transfer = active[curl]
                batch = transfer.batch
                index = transfer.index
                response = HttpResponse(
                    curl.getinfo(pycurl.RESPONSE_CODE),
                    _Headers(transfer.header_lines[:]),  # the list is cleared for the next request
                    b"".join(transfer.body_chunks),
                    now - transfer.written_at if transfer.written_at else 0.0,
                )
                if transfer.probe:
                    transfer.probe = False
                    self._end_probe(transfer.origin, warm=True)
                if transfer.trial_conn is not None:
                    if len(self._proven) >= 100_000:
                        self._proven.clear()  # connections long closed: worst case, a re-trial
                    self._proven.add(transfer.trial_conn)
                self._release(curl, transfer)
                if batch is not None:
                    batch.settle(index, response)
            for curl, code, message in failed:
                if curl not in active:
                    continue  # failed with its origin a moment ago (_fail_origin)
                transfer = active[curl]
                batch = transfer.batch
                index = transfer.index
                origin = transfer.origin
                if transfer.deferred:
                    # Stopped before it was sent: back to the front of the queue.
                    request = transfer.request
                    transfer.deferred = False
                    self._release(curl, transfer)
                    if batch is not None and request is not None:
                        self._backlog.setdefault(origin, deque()).appendleft(
                            (batch, index, request, origin)
                        )
                    continue
                kind = _ERROR_KINDS.get(code, "transport error")
                url = curl.getinfo(pycurl.EFFECTIVE_URL)
                # On a stream before the error: the server may have acted on it. A request
                # refused by the server (REFUSED_STREAM, GOAWAY) is re-sent by libcurl, so what
                # is left here after a write is a lost connection or reset: unknown outcome.
                written = bool(transfer.written_at)
                unreachable = False
                if transfer.refusal is not None:
                    error = TransportError(
                        f"refused by the outbound policy: {transfer.refusal} ({url})",
                        curl_code=code,
                        refused=True,
                    )
                else:
                    error = TransportError(
                        f"{kind}: {message} ({url})", curl_code=code, written=written
                    )
                    unreachable = not written and code in _UNREACHABLE_ERRORS
                if code in _CONNECTION_ERRORS:
                    self._warm.discard(origin)
                self._release(curl, transfer)
                if batch is not None:
                    batch.settle(index, error)
                if unreachable:
                    self._fail_origin(origin, str(error), code)
            if not queued:
                break
        self._refill()

    def _refill(self) -> None:
        backlog = self._backlog
        if not backlog:
            return
        for origin, waiting in list(backlog.items()):
            while waiting and self._has_room(origin):
                self._start(*waiting.popleft())
            if not waiting and backlog.get(origin) is waiting:
                del backlog[origin]
