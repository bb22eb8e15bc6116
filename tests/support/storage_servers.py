"""Real file-storage servers (S3, GCS, SFTP, FTP, FTPS, HTTPS) on free loopback ports, for the
tests and benchmarks of the flat-file connectors: they must speak the real protocols, never mocks.

Each server is this very module run as `python -m tests.support.storage_servers KIND CONFIG`
(S3 is moto's own server, GCS gcp-storage-emulator's, started from there) in its own session: it
never shares an event loop with pytest, a stop kills its whole process group, and it exits by
itself if the test run dies.
Register the fixtures at the end with `pytest_plugins = ["tests.support.storage_servers"]`.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import hmac
import http.client
import importlib
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from tests.support.simulator import free_port, stop_process_group

REPO_ROOT = Path(__file__).resolve().parents[2]
# Clarion's outbound policy refuses it unless allowed: tests and benchmarks allow it with
# tests.support.simulator.LOCAL_SERVERS_ALLOW (or LOCAL_SERVERS_POLICY).
HOST = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
PROBE_TIMEOUT = 1.0


# --- handles -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    """A moto S3 endpoint with one bucket; moto accepts any access key and secret."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    pid: int

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for `s3fs.S3FileSystem` / `fsspec.filesystem("s3", ...)`."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": self.region},
        }

    @functools.cached_property
    def client(self) -> Any:
        """A boto3 S3 client for seeding and checking objects behind the connector's back."""
        import boto3  # late: ~0.5 s to import, only S3 tests pay it

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, key)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


@dataclass(frozen=True)
class GcsServer:
    """A gcp-storage-emulator endpoint (the JSON API, in memory) with one bucket; no auth."""

    endpoint_url: str
    bucket: str
    pid: int

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for `gcsfs.GCSFileSystem` / `fsspec.filesystem("gs", ...)`.

        Only with the plain file system, which `running_gcs` makes sure of: see `_plain_gcsfs`.
        """
        return {"endpoint_url": self.endpoint_url, "token": "anon"}

    def _object_url(self, key: str) -> str:
        quoted = urllib.parse.quote(key, safe="")
        return f"{self.endpoint_url}/storage/v1/b/{self.bucket}/o/{quoted}"

    def _call(self, method: str, url: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
            return body

    def put_bytes(self, key: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": key})
        self._call("POST", f"{self.endpoint_url}/upload/storage/v1/b/{self.bucket}/o?{query}", data)

    def put_file(self, key: str, path: Path) -> None:
        self.put_bytes(key, path.read_bytes())

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; `FileNotFoundError` if there is none."""
        try:
            return self._call("GET", self._object_url(key) + "?alt=media")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise FileNotFoundError(key) from exc
            raise

    def exists(self, key: str) -> bool:
        try:
            self._call("GET", self._object_url(key))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._call("DELETE", self._object_url(key))


@dataclass(frozen=True)
class SftpServer:
    """An asyncssh SFTP server chrooted to `root`: the client's "/" is `root` on disk."""

    host: str
    port: int
    username: str
    password: str
    root: Path
    known_hosts: Path  # the host key generated at start, as an OpenSSH known_hosts line
    pid: int

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for `sshfs.SSHFileSystem` / `fsspec.filesystem("sftp", ...)`."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            # sshfs defaults to known_hosts=None, which trusts any host key.
            "known_hosts": str(self.known_hosts),
        }


@dataclass(frozen=True)
class FtpServer:
    """A pyftpdlib server with one user whose home (the client's "/") is `root`."""

    host: str
    port: int
    username: str
    password: str
    root: Path
    pid: int

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for `fsspec.filesystem("ftp", ...)`."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
        }


@dataclass(frozen=True)
class FtpsServer(FtpServer):
    """Explicit FTPS (AUTH TLS): TLS is required on the control and the data connections."""

    ca_file: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def storage_options(self) -> dict[str, Any]:
        # fsspec's tls=True uses ftplib's default context, which does NOT verify the server.
        return {**super().storage_options(), "tls": True}


@dataclass(frozen=True)
class HttpsServer:
    """A static file server over TLS for `root`, with Basic auth unless `username` is None."""

    base_url: str  # no trailing slash
    root: Path
    ca_file: Path
    username: str | None
    password: str | None
    pid: int

    def url(self, path: str = "") -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for `fsspec.filesystem("https", ...)`.

        `ssl` is a per-request aiohttp option (fsspec passes unknown options to every request):
        a `TCPConnector(ssl=...)` in `client_kwargs` cannot be built outside the event loop.
        The session's default headers carry the credentials: aiohttp 3.14 deprecates `auth=`.
        """
        options: dict[str, Any] = {"ssl": self.ssl_context()}
        if self.username is not None and self.password is not None:
            header = _basic_auth(self.username, self.password)
            options["client_kwargs"] = {"headers": {"Authorization": header}}
        return options


# --- process plumbing --------------------------------------------------------------------------


def _basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@contextmanager
def _serving(name: str, command: Sequence[str], ready: Callable[[], bool]) -> Iterator[int]:
    """Run `command` in its own process group until `ready()`; yield its pid; kill the group."""
    # A file, not a pipe: a chatty server must never block on a full pipe nobody reads.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not ready():
                if process.poll() is not None or time.monotonic() > deadline:
                    stop_process_group(process)
                    output.seek(0)
                    log = output.read().decode("utf-8", "replace")
                    raise RuntimeError(
                        f"{name} server did not start (exit code {process.returncode}):\n{log}"
                    )
                time.sleep(0.02)
            yield process.pid
        finally:
            stop_process_group(process)


def _greets(port: int, prefix: bytes) -> Callable[[], bool]:
    """A probe: the server accepts a connection and its banner starts with `prefix`."""

    def probe() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT) as sock:
                return sock.recv(64).startswith(prefix)
        except OSError:
            return False

    return probe


def _module_command(kind: str, config: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", __name__, kind, json.dumps(config)]


def _issue_tls(directory: Path) -> tuple[Path, Path]:
    """Write a fresh trustme CA and a 127.0.0.1/localhost certificate; return (ca, cert+key)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    ca_file, chain_file = directory / "ca.pem", directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain_file))
    return ca_file, chain_file


GCSFS_HNS = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"


def _plain_gcsfs() -> None:
    """Make `fsspec.filesystem("gs")` the plain `gcsfs.core.GCSFileSystem`, or fail now.

    gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT once, when `gcsfs` is first imported in the
    process: unless it is "false" then, `gcsfs.GCSFileSystem` (what fsspec's "gs" names) is the
    experimental file system, which asks for the bucket's layout over gRPC before nearly every
    call, and asks again after each failure. The emulator speaks no gRPC: each call would then
    wait out gcsfs's 60 s retry budget. No constructor option turns the asking off.
    """
    os.environ.setdefault(GCSFS_HNS, "false")
    gcsfs = sys.modules.get("gcsfs")
    imported_experimental = gcsfs is not None and gcsfs.GCSFileSystem.__name__ != "GCSFileSystem"
    if imported_experimental or os.environ[GCSFS_HNS].lower() in ("true", "1"):
        raise RuntimeError(
            f"gcsfs would probe the GCS emulator over gRPC (60 s a call): set {GCSFS_HNS}=false"
            " before anything imports gcsfs (fsspec imports it on the first gs:// use)"
        )


def _credentials(tmp: Path, user: str) -> tuple[Path, str, str]:
    root = tmp / "root"
    root.mkdir(parents=True, exist_ok=True)
    return root, user, secrets.token_urlsafe(12)


# --- context managers --------------------------------------------------------------------------


@contextmanager
def running_s3(tmp: Path, *, bucket: str = "clarion-test") -> Iterator[S3Server]:
    """moto's S3 with `bucket` created in eu-west-1 (us-east-1 trips s3fs's `mkdir(bucket)`)."""
    del tmp  # moto keeps everything in memory; the parameter keeps the family's signature
    port = free_port()
    url = f"http://{HOST}:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    # Import boto3 (~0.5 s) while moto boots (~1.4 s) instead of after.
    threading.Thread(target=importlib.import_module, args=("boto3",), daemon=True).start()
    command = _module_command("s3", {"port": port})
    with _serving("S3 (moto)", command, answers) as pid:
        server = S3Server(url, "clarion-test-key", "clarion-test-secret", "eu-west-1", bucket, pid)
        server.client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": server.region}
        )
        yield server


@contextmanager
def running_gcs(tmp: Path, *, bucket: str = "clarion-test") -> Iterator[GcsServer]:
    """gcp-storage-emulator's JSON API with `bucket` created at start; everything in memory."""
    del tmp  # in memory; on disk the emulator would default to ./.cloudstorage in the cwd
    _plain_gcsfs()
    port = free_port()
    url = f"http://{HOST}:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/", timeout=PROBE_TIMEOUT) as response:
                return response.status == 200  # the emulator's health check
        except OSError:  # includes urllib.error.HTTPError
            return False

    command = _module_command("gcs", {"port": port, "bucket": bucket})
    with _serving("GCS (gcp-storage-emulator)", command, answers) as pid:
        server = GcsServer(url, bucket, pid)
        server._call("GET", f"{url}/storage/v1/b/{bucket}")  # the bucket is there
        yield server


@contextmanager
def running_sftp(tmp: Path) -> Iterator[SftpServer]:
    """SFTP only (no shell, exec or scp), password auth, a new ed25519 host key each start."""
    root, user, password = _credentials(tmp, "clarion")
    port = free_port()
    known_hosts = tmp / "known_hosts"
    known_hosts.unlink(missing_ok=True)
    config = {
        "port": port,
        "root": str(root),
        "username": user,
        "password": password,
        "known_hosts": str(known_hosts),
    }
    with _serving("SFTP", _module_command("sftp", config), _greets(port, b"SSH-")) as pid:
        yield SftpServer(HOST, port, user, password, root, known_hosts, pid)


@contextmanager
def running_ftp(tmp: Path) -> Iterator[FtpServer]:
    """Plain FTP; passive data ports are ephemeral ports on 127.0.0.1 picked per transfer."""
    root, user, password = _credentials(tmp, "clarion")
    port = free_port()
    config = {"port": port, "root": str(root), "username": user, "password": password}
    with _serving("FTP", _module_command("ftp", config), _greets(port, b"220")) as pid:
        yield FtpServer(HOST, port, user, password, root, pid)


@contextmanager
def running_ftps(tmp: Path) -> Iterator[FtpsServer]:
    """Explicit FTPS with a trustme certificate; plain-text commands and transfers are refused."""
    root, user, password = _credentials(tmp, "clarion")
    ca_file, chain_file = _issue_tls(tmp)
    port = free_port()
    config = {
        "port": port,
        "root": str(root),
        "username": user,
        "password": password,
        "certfile": str(chain_file),
    }
    with _serving("FTPS", _module_command("ftp", config), _greets(port, b"220")) as pid:
        yield FtpsServer(HOST, port, user, password, root, pid, ca_file)


@contextmanager
def running_https(tmp: Path, *, auth: bool = True) -> Iterator[HttpsServer]:
    """Static files over TLS: GET/HEAD with Content-Length, ETag, Last-Modified and Range."""
    root, user, password = _credentials(tmp, "clarion")
    ca_file, chain_file = _issue_tls(tmp)
    port = free_port()
    config = {
        "port": port,
        "root": str(root),
        "certfile": str(chain_file),
        "username": user if auth else None,
        "password": password if auth else None,
    }
    context = ssl.create_default_context(cafile=str(ca_file))

    def answers() -> bool:
        connection = http.client.HTTPSConnection(HOST, port, context=context, timeout=PROBE_TIMEOUT)
        try:
            connection.request("HEAD", "/")
            return connection.getresponse().status in (200, 401)
        except OSError:  # includes ssl.SSLError
            return False
        finally:
            connection.close()

    with _serving("HTTPS", _module_command("https", config), answers) as pid:
        yield HttpsServer(
            f"https://{HOST}:{port}",
            root,
            ca_file,
            user if auth else None,
            password if auth else None,
            pid,
        )


# --- pytest fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    with running_gcs(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    with running_sftp(tmp_path_factory.mktemp("sftp")) as server:
        yield server


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    with running_ftp(tmp_path_factory.mktemp("ftp")) as server:
        yield server


@pytest.fixture(scope="session")
def ftps_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpsServer]:
    with running_ftps(tmp_path_factory.mktemp("ftps")) as server:
        yield server


@pytest.fixture(scope="session")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsServer]:
    with running_https(tmp_path_factory.mktemp("https")) as server:
        yield server


# --- the server processes (`python -m tests.support.storage_servers KIND CONFIG`) -------------


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _serve_sftp(config: dict[str, Any]) -> None:
    import asyncio

    import asyncssh

    class PasswordServer(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True  # always ask, so that a wrong user looks like a wrong password

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            return _same(username, config["username"]) & _same(password, config["password"])

    def sftp_session(channel: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(channel, chroot=config["root"])

    async def serve() -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        line = f"[{HOST}]:{config['port']} {key.export_public_key().decode()}"
        Path(config["known_hosts"]).write_text(line)
        server = await asyncssh.listen(
            HOST,
            config["port"],
            server_host_keys=[key],
            server_factory=PasswordServer,
            sftp_factory=sftp_session,
            allow_scp=False,
        )
        await server.wait_closed()

    asyncio.run(serve())


def _serve_s3(config: dict[str, Any]) -> None:
    from moto.server import main

    main(["--host", HOST, "--port", str(config["port"])])


def _serve_gcs(config: dict[str, Any]) -> None:
    from gcp_storage_emulator import server, settings
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def move(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
        """`objects.move`, which gcsfs's `mv` calls first and the emulator lacks: it answers 501,
        which gcsfs retries for ~30 s before it copies and deletes. The emulator serves one
        request at a time, so copying then deleting here is atomic to its clients, as on GCS."""
        bucket, source = request.params["bucket_name"], request.params["object_id"]
        target = request.params["dest_object_id"]
        try:
            moved = objects._copy(request.base_url, storage, bucket, source, bucket, target)
            storage.delete_file(bucket, source)
        except NotFound:
            response.status = 404
            return
        response.json(moved)

    api = re.escape(settings.API_ENDPOINT)
    moves = (
        rf"^{api}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
        r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$"
    )
    server.HANDLERS = ((moves, {"POST": move}), *server.HANDLERS)  # the router reads the global
    # In memory, and quiet: the emulator's own CLI logs every request at DEBUG.
    server.create_server(HOST, config["port"], True, config["bucket"]).run()


def _serve_ftp(config: dict[str, Any]) -> None:
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.basicConfig(level=logging.WARNING)  # pyftpdlib logs every command otherwise
    authorizer = DummyAuthorizer()
    authorizer.add_user(config["username"], config["password"], config["root"], perm="elradfmwMT")
    handler: type[FTPHandler]
    if config.get("certfile"):
        from pyftpdlib.handlers import TLS_FTPHandler

        class TlsHandler(TLS_FTPHandler):  # type: ignore[misc]
            certfile = config["certfile"]
            tls_control_required = True
            tls_data_required = True

        handler = TlsHandler
    else:
        handler = FTPHandler
    handler.authorizer = authorizer
    FTPServer((HOST, config["port"]), handler).serve_forever()


class _StaticFiles(SimpleHTTPRequestHandler):
    """The stdlib handler plus what connectors rely on: ETag, one-range requests, Basic auth."""

    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    timeout = 30  # seconds a connection may stay idle
    expected_auth: str | None = None  # the full "Basic ..." header value
    _remaining: int | None = None  # bytes of the open file to send, when serving a file

    def send_head(self) -> BinaryIO | None:
        self._remaining = None
        if self.expected_auth is not None and not _same(
            self.headers.get("Authorization", ""), self.expected_auth
        ):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="clarion-test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        path = self.translate_path(self.path)
        if os.path.isdir(path) or path.endswith("/"):
            return super().send_head()  # redirect, listing or 404, as the stdlib does
        try:
            file = open(path, "rb")  # noqa: SIM115 - the caller closes it once sent
        except OSError:
            self.send_error(404, "File not found")
            return None
        try:
            return self._send_file_head(file, path)
        except BaseException:
            file.close()
            raise

    def _send_file_head(self, file: BinaryIO, path: str) -> BinaryIO | None:
        stat = os.fstat(file.fileno())
        size, mtime = stat.st_size, stat.st_mtime_ns
        etag = f'"{size:x}-{mtime:x}"'
        last_modified = email.utils.formatdate(mtime / 1e9, usegmt=True)
        headers = {"ETag": etag, "Last-Modified": last_modified, "Accept-Ranges": "bytes"}
        if self._not_modified(etag, mtime // 10**9):
            return self._head(304, headers, None, file)
        headers["Content-Type"] = self.guess_type(path)
        span = self._range(size)
        if span is None:
            return self._head(200, headers, size, file)
        first, last = span
        if first >= size:
            headers["Content-Range"] = f"bytes */{size}"
            return self._head(416, headers, 0, file)
        last = min(last, size - 1)
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        file.seek(first)
        return self._head(206, headers, last - first + 1, file)

    def _not_modified(self, etag: str, mtime: int) -> bool:
        if "If-None-Match" in self.headers:
            return etag in {tag.strip() for tag in self.headers["If-None-Match"].split(",")}
        try:
            since = email.utils.parsedate_to_datetime(self.headers["If-Modified-Since"])
        except (TypeError, ValueError):  # absent or malformed
            return False
        return mtime <= since.timestamp()

    def _range(self, size: int) -> tuple[int, int] | None:
        """The single byte range asked for; anything else (none, several, invalid) is None."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match is None:
            return None
        first, last = match.groups()
        if first == "":
            return (max(size - int(last), 0), size - 1) if last else None  # the last N bytes
        if last and int(last) < int(first):
            return None
        return int(first), int(last) if last else size - 1

    def _head(
        self, status: int, headers: dict[str, str], length: int | None, file: BinaryIO
    ) -> BinaryIO | None:
        """Send the head; return the file to stream `length` bytes from, or None if no body."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is not None:  # a 304 has no body and must not claim a zero length
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if not length:
            file.close()
            return None
        self._remaining = length
        return file

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self._remaining is None:  # a directory listing
            super().copyfile(source, outputfile)
            return
        while self._remaining > 0:
            chunk = source.read(min(self._remaining, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            self._remaining -= len(chunk)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # benchmarks make many requests; errors are still logged


class _TlsHttpServer(ThreadingHTTPServer):
    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Handshake in the request's thread: a silent client must not block `accept()`.
        request.settimeout(_StaticFiles.timeout)
        try:
            with self.context.wrap_socket(request, server_side=True) as tls:
                super().finish_request(tls, client_address)
        except OSError:  # a failed handshake or a client gone away: its problem, not ours
            pass


def _serve_https(config: dict[str, Any]) -> None:
    if config["username"] is not None:
        # This process serves nothing else: configuring the class is configuring the server.
        _StaticFiles.expected_auth = _basic_auth(config["username"], config["password"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(config["certfile"])
    handler = functools.partial(_StaticFiles, directory=config["root"])
    server = _TlsHttpServer((HOST, config["port"]), handler)
    server.context = context
    server.serve_forever()


def _exit_with_parent() -> None:
    """Exit when the test run dies without stopping us (SIGKILL, a CI timeout): no orphans."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    _exit_with_parent()
    kind, raw_config = sys.argv[1:]
    servers: dict[str, Callable[[dict[str, Any]], None]] = {
        "s3": _serve_s3,
        "gcs": _serve_gcs,
        "sftp": _serve_sftp,
        "ftp": _serve_ftp,
        "https": _serve_https,
    }
    servers[kind](json.loads(raw_config))
