"""clarion.http2 against a real granian server over real TLS (tests/support/h2_echo_app.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from clarion.http2 import Http2Client, HttpRequest, HttpResponse, TransportError
from tests.support.waiting import eventually

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EchoServer:
    """granian serving the echo app in its own process group, restartable on the same port."""

    def __init__(self, tls: TlsFiles | None, *extra_args: str) -> None:
        self.tls = tls
        self.port = _free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        tls_args = (
            ["--ssl-certificate", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key)]
            if self.tls
            else []
        )
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "granian", "--interface", "rsgi", "--no-ws"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"),
                *tls_args,
                *self.extra_args,
                "tests.support.h2_echo_app:app",
            ],
            cwd=REPO_ROOT,
            start_new_session=True,  # one killpg stops granian and its worker process
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"granian exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("granian did not start listening within 15 s")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        try:
            os.killpg(process.pid, sig)
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        except ProcessLookupError:
            process.wait(5)
        # The worker process may outlive the main one for a moment, still listening: a restart
        # must not take its answers for the new server's.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return
            time.sleep(0.05)
        raise RuntimeError("granian still listening 5 s after being stopped")


@contextmanager
def _running(server: EchoServer) -> Iterator[EchoServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(files.ca)
    cert.cert_chain_pems[0].write_to_path(files.cert)
    cert.private_key_pem.write_to_path(files.key)
    return files


@pytest.fixture(scope="session")
def echo(tls: TlsFiles) -> Iterator[EchoServer]:
    with _running(EchoServer(tls, "--http2-max-concurrent-streams", "1000")) as server:
        yield server


@pytest.fixture
def own_echo(tls: TlsFiles) -> Iterator[EchoServer]:
    """A server of the test's own, which it may restart."""
    with _running(EchoServer(tls)) as server:
        yield server


@pytest.fixture
def ten_stream_echo(tls: TlsFiles) -> Iterator[EchoServer]:
    with _running(EchoServer(tls, "--http2-max-concurrent-streams", "10")) as server:
        yield server


@pytest.fixture
def plain_echo() -> Iterator[EchoServer]:
    with _running(EchoServer(None)) as server:
        yield server


@pytest.fixture
async def client(tls: TlsFiles) -> AsyncIterator[Http2Client]:
    client = Http2Client(ca_file=str(tls.ca))
    yield client
    await client.aclose()


def _echoed(response: HttpResponse | TransportError) -> dict[str, Any]:
    assert isinstance(response, HttpResponse), response
    assert response.status == 200, response
    echoed: dict[str, Any] = json.loads(response.body)
    return echoed


async def _stats(client: Http2Client, server: EchoServer) -> dict[str, Any]:
    response = await client.request(HttpRequest("GET", f"{server.base_url}/_stats", ()))
    stats: dict[str, Any] = json.loads(response.body)
    return stats


async def _in_flight(client: Http2Client, server: EchoServer, at_least: int = 1) -> None:
    """Until the server holds `at_least` slow requests: they are on the wire."""

    async def holding() -> bool:
        return bool((await _stats(client, server))["in_flight"] >= at_least)

    await eventually(holding, what="slow requests in flight at the server")


async def test_request_goes_over_http2_with_its_headers_and_body(
    client: Http2Client, echo: EchoServer
) -> None:
    headers = (("authorization", "bearer abc"), ("content-type", "application/json"))
    request = HttpRequest("POST", f"{echo.base_url}/3/device/ab12?x=1", headers, b'{"aps": {}}')

    response = await client.request(request)

    echoed = _echoed(response)
    assert echoed["http_version"] == "2"
    assert (echoed["method"], echoed["path"], echoed["query"]) == ("POST", "/3/device/ab12", "x=1")
    sent = dict(echoed["headers"])
    assert sent["authorization"] == "bearer abc"
    assert sent["content-type"] == "application/json"
    assert "accept" not in sent  # libcurl's defaults are switched off
    assert echoed["body"] == '{"aps": {}}'
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-app"] == "echo"


async def test_status_and_response_headers_come_back(client: Http2Client, echo: EchoServer) -> None:
    response = await client.request(HttpRequest("POST", f"{echo.base_url}/status/429", (), b"{}"))

    assert response.status == 429
    assert response.headers["retry-after"] == "7"
    assert json.loads(response.headers["x-echo"])["path"] == "/status/429"
    assert response.body == b""


async def test_pooled_handles_switch_methods_cleanly(client: Http2Client, echo: EchoServer) -> None:
    # One handle at a time, so each request reuses the handle the previous method left behind.
    # `same` is one body object: a handle keeps a POST's body while it stays a plain POST.
    same = b"s"
    for method, body in [
        ("HEAD", b""),
        ("POST", same),
        ("POST", b"a"),
        ("PUT", b"b"),
        ("POST", same),
        ("GET", b""),
        ("POST", same),
        ("DELETE", b""),
        ("POST", b""),
        ("PATCH", same),
        ("POST", same),
        ("HEAD", b""),
        ("POST", same),
        ("GET", b""),
    ]:
        response = await client.request(HttpRequest(method, f"{echo.base_url}/m", (), body))
        if method == "HEAD":
            assert (response.status, response.body) == (200, b"")
            continue
        echoed = _echoed(response)
        assert (echoed["method"], echoed["body"]) == (method, body.decode())


async def test_a_requests_own_header_follows_the_shared_ones_on_a_pooled_handle(
    client: Http2Client, echo: EchoServer
) -> None:
    # One request at a time: each reuses the handle (and header list) the previous one left.
    shared = (("authorization", "bearer abc"), ("apns-topic", "t"))
    other = (("authorization", "bearer xyz"),)
    url = f"{echo.base_url}/3/device/ab"
    for headers, own in [
        (shared, ("apns-id", "1")),
        (shared, ("apns-id", "2")),
        (shared, None),
        (shared, ("apns-id", "3")),
        (other, ("apns-id", "3")),
        (other, None),
        (shared, ("apns-id", "4")),
    ]:
        request = HttpRequest("POST", url, headers, b"{}", own_header=own)

        sent = dict(_echoed(await client.request(request))["headers"])

        assert {name: sent.get(name) for name in ("authorization", "apns-topic", "apns-id")} == {
            "authorization": dict(headers)["authorization"],
            "apns-topic": dict(headers).get("apns-topic"),
            "apns-id": own[1] if own else None,
        }
    refused = await client.request_many(
        [HttpRequest("POST", url, shared, b"{}", own_header=("apns-id", "5\r\nx: y"))]
    )
    assert isinstance(refused[0], TransportError)
    assert "line breaks" in str(refused[0])
    after = await client.request(HttpRequest("POST", url, shared, b"{}", own_header=None))
    assert "apns-id" not in dict(_echoed(after)["headers"])


async def test_5000_concurrent_requests_share_at_most_two_connections(
    tls: TlsFiles, echo: EchoServer
) -> None:
    client = Http2Client(ca_file=str(tls.ca), max_connections_per_host=2)
    await client.request(HttpRequest("GET", f"{echo.base_url}/_reset", ()))
    headers = (("apns-topic", "com.example"),)
    requests = [
        HttpRequest("POST", f"{echo.base_url}/3/device/{i:064x}", headers, b"%d" % i)
        for i in range(5000)
    ]

    results = await client.request_many(requests)

    assert [_echoed(r)["body"] for r in results] == [str(i) for i in range(5000)]
    assert 1 <= len((await _stats(client, echo))["clients"]) <= 2
    await client.aclose()


def test_runs_on_uvloop_the_loop_uvicorn_serves_on(tls: TlsFiles, echo: EchoServer) -> None:
    # uvicorn[standard] runs the API and its in-process workers on uvloop, whose timer handles
    # differ from asyncio's; several rounds make libcurl re-arm a pending timer.
    uvloop = pytest.importorskip("uvloop")

    async def rounds() -> list[str]:
        client = Http2Client(ca_file=str(tls.ca))
        bodies: list[str] = []
        try:
            for round_ in range(5):
                requests = [
                    HttpRequest("POST", f"{echo.base_url}/r", (), b"%d-%d" % (round_, i))
                    for i in range(200)
                ]
                bodies += [_echoed(r)["body"] for r in await client.request_many(requests)]
        finally:
            await client.aclose()
        return bodies

    # In a thread of its own: the test session's asyncio loop runs in this one.
    with ThreadPoolExecutor(1) as thread:
        bodies = thread.submit(uvloop.run, rounds()).result(timeout=60)

    assert bodies == [f"{r}-{i}" for r in range(5) for i in range(200)]


async def test_request_many_reports_failures_in_place(
    client: Http2Client, echo: EchoServer
) -> None:
    refused = f"https://127.0.0.1:{_free_port()}/"
    requests = [
        HttpRequest("GET", f"{echo.base_url}/a", ()),
        HttpRequest("GET", refused, ()),
        HttpRequest("GET", f"{echo.base_url}/b", ()),
        HttpRequest("GET", f"{echo.base_url}/c", (("x-bad", "a\r\nb"),)),
    ]

    results = await client.request_many(requests)

    assert isinstance(results[0], HttpResponse)
    assert _echoed(results[0])["path"] == "/a"
    assert isinstance(results[1], TransportError)
    assert isinstance(results[2], HttpResponse)
    assert _echoed(results[2])["path"] == "/b"
    assert isinstance(results[3], TransportError)
    assert "line breaks" in str(results[3])


async def test_follows_the_servers_max_concurrent_streams(
    tls: TlsFiles, ten_stream_echo: EchoServer
) -> None:
    client = Http2Client(ca_file=str(tls.ca), max_connections_per_host=1)
    try:
        url = f"{ten_stream_echo.base_url}/slow/20"
        results = await client.request_many([HttpRequest("GET", url, ())] * 200)

        assert all(isinstance(r, HttpResponse) and r.status == 200 for r in results)
        stats = await _stats(client, ten_stream_echo)
        assert 2 <= stats["peak_in_flight"] <= 10
        assert len(stats["clients"]) == 1
    finally:
        await client.aclose()


async def test_a_server_allowing_few_streams_refuses_none_of_the_default_clients_requests(
    tls: TlsFiles, ten_stream_echo: EchoServer
) -> None:
    # Until a new connection's SETTINGS arrive libcurl assumes 100 streams on it, so every
    # connection opened while requests wait risks sending more than the server allows (APNs
    # allows 1 until it has checked the token). 8 connections of 250 streams lost 22 of these
    # 800 requests after libcurl's retries and opened 10 connections.
    client = Http2Client(ca_file=str(tls.ca))
    try:
        url = f"{ten_stream_echo.base_url}/slow/20"
        results = await client.request_many([HttpRequest("GET", url, ())] * 800)

        failed = [r for r in results if not isinstance(r, HttpResponse) or r.status != 200]
        assert failed == []
        stats = await _stats(client, ten_stream_echo)
        assert len(stats["clients"]) <= 2
    finally:
        await client.aclose()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["goaway", "killed"])
async def test_survives_a_server_restart(
    tls: TlsFiles, own_echo: EchoServer, sig: signal.Signals
) -> None:
    client = Http2Client(ca_file=str(tls.ca))
    try:
        assert _echoed(await client.request(HttpRequest("GET", f"{own_echo.base_url}/", ())))
        slow = [HttpRequest("GET", f"{own_echo.base_url}/slow/300", ())] * 50
        in_flight = asyncio.ensure_future(client.request_many(slow))
        await _in_flight(client, own_echo)

        await asyncio.to_thread(own_echo.stop, sig)
        await asyncio.to_thread(own_echo.start)

        # Whatever was in flight ends, one way or the other, and never hangs.
        for result in await asyncio.wait_for(in_flight, 10):
            assert isinstance(result, HttpResponse | TransportError)
        after = [HttpRequest("GET", f"{own_echo.base_url}/after/{i}", ()) for i in range(100)]
        results = await client.request_many(after)
        assert [_echoed(r)["path"] for r in results] == [f"/after/{i}" for i in range(100)]
    finally:
        await client.aclose()


async def test_plain_http_falls_back_to_http1(plain_echo: EchoServer) -> None:
    client = Http2Client()
    try:
        response = await client.request(HttpRequest("POST", f"{plain_echo.base_url}/x", (), b"hi"))

        echoed = _echoed(response)
        assert (echoed["http_version"], echoed["body"]) == ("1.1", "hi")
    finally:
        await client.aclose()


async def test_refused_connection_raises_transport_error(client: Http2Client) -> None:
    url = f"https://127.0.0.1:{_free_port()}/"
    with pytest.raises(TransportError, match="connection failed") as caught:
        await client.request(HttpRequest("GET", url, ()))
    assert caught.value.curl_code == 7

    # The requests held back while the first one probed the origin fail too, not hang.
    results = await asyncio.wait_for(client.request_many([HttpRequest("GET", url, ())] * 50), 5)
    assert all(isinstance(r, TransportError) and r.curl_code == 7 for r in results)


async def test_untrusted_certificate_raises_transport_error(echo: EchoServer) -> None:
    client = Http2Client()  # the system store does not know the test CA
    try:
        with pytest.raises(TransportError, match="TLS"):
            await client.request(HttpRequest("GET", f"{echo.base_url}/", ()))
    finally:
        await client.aclose()


async def test_slow_answer_raises_timeout(tls: TlsFiles, echo: EchoServer) -> None:
    client = Http2Client(ca_file=str(tls.ca), response_timeout=0.2)
    try:
        with pytest.raises(TransportError, match="timeout") as caught:
            await client.request(HttpRequest("GET", f"{echo.base_url}/slow/2000", ()))
        assert caught.value.curl_code == 28
        assert caught.value.written  # the server had it: it may have acted on it
    finally:
        await client.aclose()


async def test_requests_waiting_for_a_stream_are_not_timed_out_by_the_wait(
    tls: TlsFiles, ten_stream_echo: EchoServer
) -> None:
    # 40 requests on one connection of 10 streams, each answered 0.6 s after it was written:
    # the last ones are answered ~2.4 s after they were made, each within the 1 s response
    # timeout of its own write. libcurl's TIMEOUT_MS, counted from the hand-over, failed 30.
    client = Http2Client(ca_file=str(tls.ca), max_connections_per_host=1, response_timeout=1.0)
    try:
        url = ten_stream_echo.base_url
        await client.request(HttpRequest("GET", f"{url}/warm-up", ()))
        results = await client.request_many([HttpRequest("GET", f"{url}/slow/600", ())] * 40)

        assert [r for r in results if not isinstance(r, HttpResponse)] == []
        assert (await _stats(client, ten_stream_echo))["peak_in_flight"] == 10
    finally:
        await client.aclose()


@contextmanager
def _never_accepting(*, backlog_full: bool) -> Iterator[str]:
    """The URL of a TCP listener nobody accepts on. Its backlog full, SYNs go unanswered:
    connecting times out. Otherwise the kernel completes TCP and the TLS handshake never gets an
    answer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0 if backlog_full else 16)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3 if backlog_full else 0)]
        try:
            for filler in fillers:  # Linux queues backlog + 1 connections
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield f"https://127.0.0.1:{port}/"
        finally:
            for filler in fillers:
                filler.close()


async def test_connect_timeout_fails_the_requests_as_never_written() -> None:
    client = Http2Client(connect_timeout=0.3, tls_timeout=2.0, response_timeout=2.0)
    with _never_accepting(backlog_full=True) as url:
        started = time.monotonic()
        results = await client.request_many([HttpRequest("GET", url, ())] * 20)
        elapsed = time.monotonic() - started
        await client.aclose()

    # All 20 fail with the first connection's timeout, not one or two at a time after it.
    errors = [r for r in results if isinstance(r, TransportError)]
    assert len(errors) == 20
    assert {(e.curl_code, e.written) for e in errors} == {(28, False)}
    assert "TCP connect" in str(errors[0])
    assert 0.3 <= elapsed < 1.5


async def test_tls_timeout_is_separate_from_the_connect_timeout() -> None:
    client = Http2Client(connect_timeout=0.3, tls_timeout=0.5, response_timeout=5.0)
    with _never_accepting(backlog_full=False) as url:
        started = time.monotonic()
        [result] = await client.request_many([HttpRequest("GET", url, ())])
        elapsed = time.monotonic() - started
        await client.aclose()

    # TCP was up within 0.3 s, so the handshake had the rest of 0.3 + 0.5 s.
    assert isinstance(result, TransportError)
    assert (result.curl_code, result.written) == (28, False)
    assert "TCP connect" not in str(result)
    assert 0.7 <= elapsed < 2.0


async def test_cancelled_caller_frees_its_streams(
    tls: TlsFiles, ten_stream_echo: EchoServer
) -> None:
    client = Http2Client(ca_file=str(tls.ca), max_connections_per_host=1)
    try:
        url = ten_stream_echo.base_url
        await client.request(HttpRequest("GET", f"{url}/warm-up", ()))
        hog = asyncio.ensure_future(
            client.request_many([HttpRequest("GET", f"{url}/slow/5000", ())] * 10)
        )
        probe = Http2Client(ca_file=str(tls.ca))  # the client's own connection is full
        try:
            await _in_flight(probe, ten_stream_echo, 10)  # all 10 streams the server allows, 5 s
        finally:
            await probe.aclose()
        hog.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hog

        started = time.monotonic()
        assert _echoed(await client.request(HttpRequest("GET", f"{url}/next", ())))
        assert time.monotonic() - started < 2
    finally:
        await client.aclose()


async def test_aclose_fails_pending_requests_and_is_idempotent(
    tls: TlsFiles, echo: EchoServer
) -> None:
    client = Http2Client(ca_file=str(tls.ca))
    slow = [HttpRequest("GET", f"{echo.base_url}/slow/5000", ())] * 20
    pending = asyncio.ensure_future(client.request_many(slow))
    await _in_flight(client, echo)

    await client.aclose()
    await client.aclose()

    results = await asyncio.wait_for(pending, 1)
    assert all(isinstance(r, TransportError) and "closed" in str(r) for r in results)
    with pytest.raises(TransportError, match="closed"):
        await client.request(HttpRequest("GET", f"{echo.base_url}/", ()))
