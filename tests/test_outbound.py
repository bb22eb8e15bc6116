"""The outbound policy (clarion.outbound) against real servers: import sources of every scheme,
an S3 endpoint_url, a host name that resolves to a refused address, a redirect to one, GDPR
callbacks, Web Push subscriptions; and connector failures described in words (SFTP).

The session's settings allow 127.0.0.1/32 (where the simulators and storage servers listen);
these tests run with stricter copies of them. Linux answers on all of 127.0.0.0/8, so a second
server on 127.0.0.2 stands for "a loopback address the operator did not allow"."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clarion.exports.tasks import ExportRunner
from clarion.imports.tasks import ImportRunner
from clarion.outbound import DestinationRefused, OutboundPolicy, WebhookClient, parse_allowed
from clarion.runtime import Runtime
from clarion.storage import Storage, StorageCredentials, StorageError
from tests.conftest import ClientApp
from tests.support.clock import Clock
from tests.support.simulator import LOCAL_SERVERS_POLICY
from tests.test_campaigns import error
from tests.test_exports import MIDNIGHT, create_destination, place_on
from tests.test_exports import _first_day as first_export_day
from tests.test_gdpr import a_known_user, process, request
from tests.test_imports import create_source, folder_on, one

if TYPE_CHECKING:
    from tests.support.storage_servers import (
        FtpServer,
        FtpsServer,
        GcsServer,
        HttpsServer,
        S3Server,
    )

REFUSED = "is a loopback address; an operator can allow it with CLARION_OUTBOUND_ALLOW"


def policy(*allowed: str, allow_http: bool = False) -> OutboundPolicy:
    return OutboundPolicy(*parse_allowed(allowed), allow_http=allow_http)


# The rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped
        ("2002:7f00:1::", "a loopback address"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", "a private address"),  # NAT64 around 10.0.0.1
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd00::1", "a private address"),  # unique local
        ("169.254.169.254", "a link-local address (where cloud metadata services answer)"),
        ("fe80::1", "a link-local address (where cloud metadata services answer)"),
        ("224.0.0.251", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "the unspecified address"),
        ("::", "the unspecified address"),
        ("100.64.0.1", "in the shared address space 100.64.0.0/10 (carrier-grade NAT)"),
        ("240.0.0.1", "a private address"),  # reserved, and counted private by Python
        ("192.0.2.10", "a private address"),  # documentation
        ("198.18.0.1", "a private address"),  # benchmarking
    ],
)
def test_addresses_that_reach_the_servers_own_network_are_refused_by_rule(
    address: str, rule: str
) -> None:
    refusal = policy().address_refusal(address)
    assert refusal is not None
    assert f" is {rule}; an operator can allow it with CLARION_OUTBOUND_ALLOW" in refusal


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert policy().address_refusal(address) is None


def test_the_operator_allows_networks_and_host_names() -> None:
    allowing = policy("10.1.0.0/16", "127.0.0.1", "Minio.Internal.")
    assert allowing.address_refusal("10.1.200.3") is None
    assert allowing.address_refusal("::ffff:10.1.0.9") is None  # the same address, mapped
    assert allowing.address_refusal("10.2.0.1") is not None
    assert allowing.address_refusal("127.0.0.2") is not None
    assert allowing.host_allowed("minio.internal")
    assert allowing.url_refusal("https://minio.internal:9000/x") is None
    with pytest.raises(ValueError, match="neither an address, a network nor a host name"):
        parse_allowed(["10.0.0.0/33x"])


def test_plain_http_is_refused_where_https_is_required_unless_allowed() -> None:
    assert "must be an https:// URL; an operator can allow http:// with" in str(
        policy().url_refusal("http://example.com/done", https_only=True)
    )
    assert policy(allow_http=True).url_refusal("http://example.com/done", https_only=True) is None
    assert policy().url_refusal("http://example.com/ids.csv") is None  # a download may be http


# Import sources --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_bundle(ftps_server: FtpsServer, https_server: HttpsServer, tmp_path_factory: Any) -> Path:
    bundle: Path = tmp_path_factory.mktemp("ca") / "bundle.pem"
    bundle.write_bytes(ftps_server.ca_file.read_bytes() + https_server.ca_file.read_bytes())
    return bundle


async def post_source(
    api: httpx.AsyncClient, app: ClientApp, name: str, url: str, credentials: Any = None
) -> httpx.Response:
    return await api.post(
        f"/1.0/{app.api_key}/imports",
        headers=app.headers(),
        json={
            "name": name,
            "url": url,
            "credentials": credentials,
            "id_type": "custom_ids",
            "audience_name": "a",
        },
    )


def runner_allowing(runtime: Runtime, ca_bundle: Path, root: Path, *allowed: str) -> ImportRunner:
    settings = runtime.settings.model_copy(
        update={
            "connector_ca_file": str(ca_bundle),
            "import_local_roots": [root],
            "outbound_allow": list(allowed),
        }
    )
    return ImportRunner(runtime.sessions, settings, runtime.box)


# In capitals: the URL's scheme (HTTPS) or the S3 endpoint_url's (HTTP), RFC 3986 §3.1.
@pytest.mark.parametrize("protocol", ["https", "s3", "sftp", "ftp", "ftps", "HTTPS", "S3"])
async def test_a_source_on_loopback_is_refused_unless_the_operator_allows_it(
    protocol: str,
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    drop = folder_on(protocol.lower(), request, tmp_path / str(ios_app.app_id))
    drop.put("audience.csv", b"id\nfrom-loopback\n")  # over HTTPS the URL names this file
    if protocol == "S3":
        drop.credentials["endpoint_url"] = drop.credentials["endpoint_url"].replace("http", "HTTP")
    elif protocol.isupper():
        drop.url = drop.url.replace(protocol.lower(), protocol, 1)
    await create_source(api, ios_app, drop)  # the session's settings allow 127.0.0.1

    refused = one(
        await runner_allowing(runtime, ca_bundle, tmp_path).run_source(
            app_id=ios_app.app_id, name="crm"
        )
    )
    allowed = one(
        await runner_allowing(runtime, ca_bundle, tmp_path, "127.0.0.1/32").run_source(
            app_id=ios_app.app_id, name="crm"
        )
    )

    assert refused.status == "failed"
    # The S3 bucket is reached through its endpoint_url, on 127.0.0.1 too.
    assert "refused by the outbound policy: " in str(refused.error)
    assert f"127.0.0.1 {REFUSED}" in str(refused.error)
    assert (allowed.status, allowed.ids_accepted) == ("succeeded", 1), allowed.error


async def test_a_host_name_that_resolves_to_a_refused_address_is_refused(
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    ca_bundle: Path,
    tmp_path: Path,
    s3_server: S3Server,
) -> None:
    # What DNS rebinding does: the name passes every check of the URL, the address it
    # resolves to when connecting is refused.
    s3_server.put_bytes("named/ids.csv", b"id\nthrough-a-name\n")
    endpoint = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    credentials = {
        "access_key": s3_server.access_key,
        "secret_key": s3_server.secret_key,
        "region": s3_server.region,
        "endpoint_url": endpoint,
    }
    url = f"s3://{s3_server.bucket}/named"
    response = await post_source(api, ios_app, "by-name", url, credentials)
    assert response.status_code == 201, response.text

    run = one(
        await runner_allowing(runtime, ca_bundle, tmp_path).run_source(
            app_id=ios_app.app_id, name="by-name"
        )
    )

    assert run.status == "failed"
    assert f"localhost (127.0.0.1) {REFUSED}" in str(run.error) or (
        f"localhost (::1) {REFUSED}" in str(run.error)
    )


class _Local(BaseHTTPRequestHandler):
    """GET: an id file, or a redirect to `server.redirect_to`; POST: kept in `server.posted`."""

    server: _LocalServer

    def do_GET(self) -> None:
        if self.server.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"id\nafter-a-redirect\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.posted.append((self.path, self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


class _LocalServer(ThreadingHTTPServer):
    def __init__(self, host: str, redirect_to: str | None = None) -> None:
        super().__init__((host, 0), _Local)
        self.redirect_to = redirect_to
        self.posted: list[tuple[str, bytes]] = []
        self.port = int(self.server_address[1])


@contextmanager
def serving(host: str = "127.0.0.1", redirect_to: str | None = None) -> Iterator[_LocalServer]:
    """A plain-HTTP server on `host` (Linux answers on all of 127.0.0.0/8), in a thread."""
    server = _LocalServer(host, redirect_to)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def local_http() -> Iterator[_LocalServer]:
    with serving() as server:
        yield server


@pytest.fixture
def redirecting() -> Iterator[str]:
    """A server on 127.0.0.1 whose file is a redirect to a server on 127.0.0.2."""
    with (
        serving("127.0.0.2") as target,
        serving(redirect_to=f"http://127.0.0.2:{target.port}/ids.csv") as origin,
    ):
        yield f"http://127.0.0.1:{origin.port}/ids.csv"


async def test_a_redirect_to_a_refused_address_is_refused(
    redirecting: str,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    response = await post_source(api, ios_app, "moved", redirecting)
    assert response.status_code == 201, response.text

    only_origin = runner_allowing(runtime, ca_bundle, tmp_path, "127.0.0.1/32")
    refused = one(await only_origin.run_source(app_id=ios_app.app_id, name="moved"))
    both = runner_allowing(runtime, ca_bundle, tmp_path, "127.0.0.1/32", "127.0.0.2/32")
    allowed = one(await both.run_source(app_id=ios_app.app_id, name="moved"))

    assert refused.status == "failed"
    assert f"127.0.0.2 {REFUSED}" in str(refused.error)
    assert (allowed.status, allowed.ids_accepted) == ("succeeded", 1)


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("url", "sftp://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("url", "sftp://[::ffff:127.0.0.2]/in", "a loopback address"),
        ("url", "ftp://10.0.0.8/in", "a private address"),
        ("credentials.endpoint_url", "http://127.0.0.2:9000", "a loopback address"),
        ("credentials.endpoint_url", "http://[fd00::5]:9000", "a private address"),
    ],
)
async def test_a_location_written_as_a_refused_address_is_a_400_naming_the_field(
    field: str, value: str, rule: str, api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    location: dict[str, Any] = {"url": "s3://bucket/in", "credentials": {}}
    if field == "url":
        location["url"] = value
    else:
        location["credentials"]["endpoint_url"] = value
    for path in ("imports", "exports/destinations"):
        body: dict[str, Any] = {"name": "nope", **location}
        if path == "imports":
            body.update(id_type="custom_ids", audience_name="a")
        else:
            body.update(kind="push_events")
        response = await api.post(
            f"/1.0/{ios_app.api_key}/{path}", headers=ios_app.headers(), json=body
        )
        message = error(response, 400, 31)
        assert message.startswith(f"MALFORMED_PARAMETER: {field}: "), message
        assert f"is {rule}" in message
        assert "an operator can allow it with CLARION_OUTBOUND_ALLOW" in message


async def test_a_gcs_service_accounts_token_uri_on_loopback_is_not_called(
    gcs_server: GcsServer,  # not used: it makes gcsfs's first import pick its plain file system
    local_http: _LocalServer,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    # gcsfs would exchange the key's JWT at its token_uri (over `requests`) before any
    # storage call: the tenant chose that URL too.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    account = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k1",
        "private_key": key.decode(),
        "client_email": "importer@p.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"http://localhost:{local_http.port}/token",
    }
    url = "gs://some-bucket/in"
    response = await post_source(api, ios_app, "gcs", url, {"service_account": json.dumps(account)})
    assert response.status_code == 201, response.text
    literal = {**account, "token_uri": "https://127.0.0.2/token"}
    refused_early = await post_source(
        api, ios_app, "gcs-literal", url, {"service_account": json.dumps(literal)}
    )

    run = one(
        await runner_allowing(runtime, ca_bundle, tmp_path).run_source(
            app_id=ios_app.app_id, name="gcs"
        )
    )

    assert local_http.posted == []
    assert run.status == "failed"
    assert "refused by the outbound policy: token_uri" in str(run.error)
    assert f"localhost (127.0.0.1) {REFUSED}" in str(run.error)
    message = error(refused_early, 400, 31)
    assert f"credentials.service_account: token_uri 127.0.0.2 {REFUSED}" in message


# GDPR callbacks --------------------------------------------------------------------------------


async def test_a_callback_to_loopback_is_not_called_even_through_a_host_name(
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_http: _LocalServer,
) -> None:
    await a_known_user(api, ios_app, "cb-by-name")
    for host in ("localhost", "127.0.0.1"):
        url = f"http://{host}:{local_http.port}/done"
        await request(api, ios_app, "review", "custom_id", "cb-by-name", callback_url=url)

    await process(runtime, policy(allow_http=True))

    assert local_http.posted == []


@pytest.mark.parametrize("scheme", ["http", "HTTP"])  # schemes are case-insensitive
async def test_a_plain_http_callback_is_called_only_if_the_operator_allows_http(
    scheme: str,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_http: _LocalServer,
) -> None:
    await a_known_user(api, ios_app, "cb-http")
    url = f"{scheme}://127.0.0.1:{local_http.port}/done"
    first = await request(api, ios_app, "review", "custom_id", "cb-http", callback_url=url)
    await process(runtime, policy("127.0.0.1"))
    second = await request(api, ios_app, "review", "custom_id", "cb-http", callback_url=url)
    await process(runtime, policy("127.0.0.1", allow_http=True))

    assert [json.loads(body)["request_id"] for _, body in local_http.posted] == [second]
    assert first != second


async def test_a_refused_callback_names_the_host_of_its_own_url() -> None:
    """Two names of one address, one after the other: each refusal names its own URL's host
    (aiohttp's DNS cache answers the second "localhost" without asking the resolver)."""
    client = WebhookClient(policy())
    messages = []
    try:
        for url in ("https://localhost:9/", "https://0x7f.1:9/", "https://user@localhost:9/"):
            with pytest.raises(DestinationRefused) as refused:
                await client.post_json(url, {})
            messages.append(str(refused.value))
    finally:
        await client.aclose()
    assert [m.split(" (")[0] for m in messages] == ["localhost", "0x7f.1", "localhost"], messages


@pytest.mark.parametrize(
    ("callback_url", "reason"),
    [
        ("https://127.0.0.2/done", f"127.0.0.2 {REFUSED}"),
        ("https://[::ffff:169.254.169.254]/", "is a link-local address"),
        # A scheme in capitals is a URL all the same (RFC 3986 §3.1), under the same policy.
        ("HTTPS://127.0.0.2/done", f"127.0.0.2 {REFUSED}"),
        (
            "Http://example.com/done",
            "must be an https:// URL; an operator can allow http:// with "
            "CLARION_OUTBOUND_ALLOW_HTTP",
        ),
        (
            "http://example.com/done",
            "must be an https:// URL; an operator can allow http:// with "
            "CLARION_OUTBOUND_ALLOW_HTTP",
        ),
    ],
)
async def test_a_refused_callback_url_is_a_400_naming_the_field(
    callback_url: str,
    reason: str,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The operator's settings as shipped: no http://, nothing allowed.
    monkeypatch.setattr(runtime, "outbound", policy())
    response = await api.post(
        f"/1.0/{ios_app.api_key}/gdpr/request",
        headers=ios_app.headers(),
        json={
            "request_type": "review",
            "id": {"type": "custom_id", "value": "x"},
            "callback_url": callback_url,
        },
    )
    message = error(response, 400, 31)
    assert message.startswith("MALFORMED_PARAMETER: callback_url: "), message
    assert reason in message


# Web Push subscriptions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "rule"),
    [
        ("https://10.0.0.7/push/abc", "a private address"),
        ("https://127.0.0.2:8443/push/abc", "a loopback address"),
        ("HTTPS://127.0.0.2:8443/push/abc", "a loopback address"),
        ("https://[fe80::1]/push/abc", "a link-local address"),
    ],
)
async def test_a_web_push_subscription_to_a_refused_address_is_a_400(
    endpoint: str, rule: str, api: httpx.AsyncClient, web_app: ClientApp
) -> None:
    response = await api.put(
        f"/sdk/v1/{web_app.api_key}/installations/browser-1",
        json={
            "webpush_subscription": {
                "endpoint": endpoint,
                "keys": {"p256dh": "B" * 87, "auth": "A" * 22},
            }
        },
    )
    message = error(response, 400, 31)
    assert message.startswith("MALFORMED_PARAMETER: webpush_subscription.endpoint: "), message
    assert f"is {rule}" in message
    assert "an operator can allow it with CLARION_OUTBOUND_ALLOW" in message


# Connector failures in words (defect: "TypeError: 'NoneType' object is not iterable") -----------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on leaving: nothing listens there


@pytest.mark.parametrize("user", ["ops", None])
async def test_an_sftp_server_that_is_down_or_not_ssh_is_described_in_words(
    user: str | None,
    local_http: _LocalServer,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    ca_bundle: Path,
    tmp_path: Path,
) -> None:
    credentials = {"username": user, "password": "secret"} if user else {}
    for name, port in (("down", closed_port()), ("http", local_http.port)):
        response = await post_source(api, ios_app, name, f"sftp://127.0.0.1:{port}/in", credentials)
        assert response.status_code == 201, response.text
    runner = runner_allowing(runtime, ca_bundle, tmp_path, "127.0.0.1/32")

    down = one(await runner.run_source(app_id=ios_app.app_id, name="down"))
    http = one(await runner.run_source(app_id=ios_app.app_id, name="http"))

    if user is None:
        expected = "no user name for the SFTP server (give credentials.username"
        assert expected in str(down.error)
        assert expected in str(http.error)
    else:
        assert "connection refused: nothing listens on that host and port" in str(down.error)
        assert "is an SSH server listening on that port?" in str(http.error)
    for run in (down, http):
        assert run.status == "failed"
        assert "TypeError" not in str(run.error)
        assert "secret" not in str(run.error)


def test_other_connector_failures_say_what_to_do(
    https_server: HttpsServer, ftp_server: FtpServer, tmp_path: Path
) -> None:
    def failure(url: str, credentials: StorageCredentials, ca_file: str | None = None) -> str:
        with (
            Storage(url, credentials, ca_file=ca_file, outbound=LOCAL_SERVERS_POLICY) as storage,
            pytest.raises(StorageError) as raised,
        ):
            storage.list()
        return str(raised.value)

    (https_server.root / "a.csv").write_text("id\n1\n")
    login = StorageCredentials(username=https_server.username, password="wrong")
    ftp_login = StorageCredentials(username=ftp_server.username, password=ftp_server.password)
    ca = str(https_server.ca_file)

    assert "the server's TLS certificate is not trusted" in failure(
        https_server.url("a.csv"), StorageCredentials()
    )
    assert "CLARION_CONNECTOR_CA_FILE" in failure(https_server.url("a.csv"), StorageCredentials())
    assert "the server refused access (HTTP 401): check credentials.username" in failure(
        https_server.url("a.csv"), login, ca
    )
    assert "connection refused: nothing listens on that host and port" in failure(
        f"https://127.0.0.1:{closed_port()}/a.csv", StorageCredentials()
    )
    assert "the FTP server refused the login (530" in failure(
        f"ftp://{ftp_server.host}:{ftp_server.port}/",
        StorageCredentials(username=ftp_server.username, password="wrong"),
    )
    assert "the FTP server does not offer TLS" in failure(
        f"ftps://{ftp_server.host}:{ftp_server.port}/", ftp_login
    )


async def test_an_export_destination_on_loopback_fails_its_day_naming_the_rule(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    place = place_on("sftp", request, tmp_path / str(ios_app.app_id))
    await create_destination(api, ios_app, place)
    await first_export_day(runtime, ios_app)
    settings = runtime.settings.model_copy(update={"outbound_allow": []})
    clock = Clock(MIDNIGHT + timedelta(hours=2))

    runs = await ExportRunner(runtime.sessions, settings, runtime.box, clock=clock).run_due()

    mine = [run for run in runs if run.error and place.url in run.error]
    assert [run.status for run in mine] == ["failed"]
    assert f"refused by the outbound policy: 127.0.0.1 {REFUSED}" in str(mine[0].error)
    assert place.names() == []
