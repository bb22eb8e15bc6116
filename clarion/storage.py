"""One small interface over remote file storage: list, read, write and delete files in a folder
given by URL (s3://, sftp://, ftp://, ftps://, https://, file://).

fsspec does the protocols (s3fs, sshfs over asyncssh, its FTP and HTTP file systems); see
docs/decisions/0012-file-connectors.md. Every connection goes through the outbound policy
(clarion.outbound), checked on the address connected to: see
docs/decisions/0017-outbound-policy.md. Flat-file imports read through it and daily exports
write through it. Calls are blocking (fsspec's FTP file system has no async form), so callers
on the event loop run them with `asyncio.to_thread`; the `Storage` object is not shared
between threads.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fnmatch
import ftplib
import hashlib
import http.client
import json
import os
import posixpath
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import aiohttp
import fsspec
import fsspec.asyn
from fsspec.implementations.ftp import FTPFileSystem

from clarion.outbound import AddressGuard, DestinationRefused, OutboundPolicy, refusal_in

SCHEMES = ("s3", "gs", "sftp", "ftp", "ftps", "https", "http", "file")
OBJECT_STORES = ("s3", "gs")  # an object appears only once fully written
READ_BLOCK = 4 * 1024 * 1024  # per request: FTP and S3 ranged reads, HTTP streaming
WRITE_BLOCK = 8 * 1024 * 1024  # S3 multipart parts must be at least 5 MiB


class StorageError(Exception):
    """The storage refused or could not be reached; the message is fit for a run history."""


@dataclass(frozen=True)
class StorageCredentials:
    """What a location needs to authenticate, by protocol: S3 access key and secret (and the
    endpoint and region of an S3-compatible service), a user name and password (SFTP, FTP(S),
    HTTP Basic), an SSH private key and the server's pinned host key (SFTP)."""

    username: str | None = None
    password: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    private_key: str | None = None
    host_key: str | None = None  # "ssh-ed25519 AAAA…": the SFTP server's key, checked if set
    service_account: str | None = None  # GCS: a service account's JSON key


@dataclass(frozen=True)
class RemoteFile:
    path: str  # as the file system names it, for open / delete
    name: str  # the base name, matched against patterns
    size: int | None
    # What changes when the file does: ETag where the protocol has one, else size and mtime.
    fingerprint: str


class Storage:
    """A folder (or, over HTTP(S), a single file) on a remote storage."""

    def __init__(
        self,
        url: str,
        credentials: StorageCredentials,
        *,
        ca_file: str | None = None,
        local_roots: tuple[Path, ...] = (),
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        if self.scheme not in SCHEMES:
            supported = ", ".join(SCHEMES)
            raise StorageError(f"unsupported URL scheme {parts.scheme!r} (use {supported})")
        self._credentials = credentials
        self._ca_file = ca_file
        self._policy = outbound or OutboundPolicy()
        # One guard per storage: the connections of its aiohttp sessions (HTTP(S), S3, GCS).
        self._guard = AddressGuard(self._policy)
        self._local_roots = tuple(root.resolve() for root in local_roots)
        self._fs: fsspec.AbstractFileSystem | None = None
        self._root = self._root_path(parts, local_roots)

    # The interface -------------------------------------------------------------------------

    def list(self, pattern: str = "*") -> list[RemoteFile]:
        """The files of the folder whose name matches the glob `pattern`, by name. Over HTTP(S)
        the URL is the file itself, listed alone."""
        fs = self._filesystem()
        try:
            if self.scheme in ("http", "https"):
                entries = [fs.info(self._root)]
            else:
                entries = fs.ls(self._root, detail=True)
        except FileNotFoundError as exc:
            cause = exc.__cause__
            if (
                self.scheme in ("http", "https")
                and cause is not None
                and _http_status(cause) not in (404, 410)
            ):
                # fsspec's HTTP file system calls every failure "not found": a refused
                # connection, a TLS error or a 401 are told as what they are.
                raise StorageError(self._describe(cause, self._display())) from exc
            if self.scheme in OBJECT_STORES and self._bucket_exists():
                return []  # a prefix with no object yet: object stores have no folders
            raise StorageError(f"{self._display()} does not exist") from exc
        except Exception as exc:
            raise StorageError(self._describe(exc, self._display())) from exc
        files = []
        for entry in entries:
            if entry.get("type") not in ("file", None):
                continue
            name = posixpath.basename(str(entry["name"]).rstrip("/")) or self._root
            if self.scheme not in ("http", "https") and not fnmatch.fnmatchcase(name, pattern):
                continue
            if self.scheme == "file" and not self._allowed(str(entry["name"])):
                continue  # a symbolic link out of the allowed folders
            files.append(
                RemoteFile(
                    path=str(entry["name"]),
                    name=name,
                    size=entry.get("size"),
                    fingerprint=_fingerprint(entry),
                )
            )
        return sorted(files, key=lambda remote: remote.name)

    def open_read(self, path: str) -> IO[bytes]:
        """The file's bytes, streamed; compressed files (.gz, .bz2, .xz, .zst) are inflated."""
        fs = self._filesystem()
        if self.scheme == "file" and not self._allowed(path):
            raise StorageError(f"{path} lies outside the allowed folders")
        try:
            return fs.open(path, "rb", block_size=READ_BLOCK, compression="infer")  # type: ignore[no-any-return]
        except FileNotFoundError as exc:
            raise StorageError(f"{path} no longer exists") from exc
        except Exception as exc:
            raise StorageError(self._describe(exc, path)) from exc

    def fingerprint(self, path: str) -> str:
        """The file's fingerprint now (to tell whether it changed while it was read)."""
        try:
            return _fingerprint(self._filesystem().info(path))
        except Exception as exc:
            raise StorageError(self._describe(exc, path)) from exc

    def write(self, name: str, chunks: Iterator[bytes]) -> str:
        """Write a file named `name` into the folder from `chunks`; returns its path. A reader
        never sees it half written: object stores publish an object once whole, elsewhere it
        is written as `.{name}.part` and renamed."""
        fs = self._filesystem()
        path = posixpath.join(self._root, name)
        staged = (
            path if self.scheme in OBJECT_STORES else posixpath.join(self._root, f".{name}.part")
        )
        try:
            out = fs.open(staged, "wb", block_size=WRITE_BLOCK)
            try:
                for chunk in chunks:
                    out.write(chunk)
            except BaseException:
                # Not close(): fsspec's close() would publish what was written so far. An
                # object store's discard() aborts the upload; elsewhere the .part file goes.
                try:
                    with contextlib.suppress(Exception):
                        out.discard()
                finally:
                    if staged == path:
                        out.closed = True  # never flushed at garbage time, even if discard failed
                if staged != path:
                    with contextlib.suppress(Exception):
                        out.close()
                    with contextlib.suppress(Exception):
                        fs.rm_file(staged)
                raise
            out.close()
            if staged != path:
                try:
                    fs.mv(staged, path)
                except Exception:
                    # Servers whose rename refuses an existing target (plain SFTP v3, some FTP).
                    fs.rm_file(path)
                    fs.mv(staged, path)
        except Exception as exc:
            raise StorageError(self._describe(exc, path)) from exc
        return path

    def delete(self, path: str) -> None:
        try:
            self._filesystem().rm_file(path)
        except FileNotFoundError:
            pass  # already gone: what was asked
        except Exception as exc:
            raise StorageError(self._describe(exc, path)) from exc

    def close(self) -> None:
        fs, self._fs = self._fs, None
        if fs is None:
            return
        if isinstance(fs, FTPFileSystem):
            with contextlib.suppress(Exception):  # already broken: the first error stands
                fs.ftp.quit()
        elif self.scheme == "sftp":
            with contextlib.suppress(Exception):
                fs.client.close()  # the SSH connection; sshfs keeps it open otherwise

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # Building the fsspec file system ---------------------------------------------------------

    def _root_path(self, parts: Any, local_roots: tuple[Path, ...]) -> str:
        if self.scheme in OBJECT_STORES:
            return f"{parts.netloc}{parts.path}".rstrip("/")
        if self.scheme in ("http", "https"):
            return self.url
        if self.scheme == "file":
            # Only under the folders the operator allowed (one per app, see the runners): an
            # API key must not reach the server's own files, nor another app's.
            path = Path(unquote(parts.path)).resolve()
            if not self._allowed(str(path)):
                roots = ", ".join(str(root) for root in self._local_roots) or "none"
                raise StorageError(f"file:// URLs must lie under the allowed folders ({roots})")
            return str(path)
        return unquote(parts.path).rstrip("/") or "/"

    def _bucket_exists(self) -> bool:
        try:
            return bool(self._filesystem().exists(self._root.split("/", 1)[0]))
        except Exception:
            return False

    def _allowed(self, path: str) -> bool:
        real = Path(os.path.realpath(path))
        return any(real.is_relative_to(root) for root in self._local_roots)

    def _filesystem(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            try:
                self._fs = self._connect()
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(self._describe(exc, self._display())) from exc
        return self._fs

    def _connect(self) -> fsspec.AbstractFileSystem:
        parts = urlsplit(self.url)
        creds = self._credentials
        if self.scheme in OBJECT_STORES and creds.endpoint_url:
            refusal = self._policy.url_refusal(creds.endpoint_url)
            if refusal is not None:
                raise StorageError(
                    f"{self._display()}: refused by the outbound policy: endpoint_url "
                    f"{creds.endpoint_url}: {refusal}"
                )
        if self.scheme == "s3":
            client: dict[str, Any] = {}
            if creds.region:
                client["region_name"] = creds.region
            if self._ca_file:
                client["verify"] = _bundle_with_system_cas(self._ca_file)
            return fsspec.filesystem(
                "s3",
                key=creds.access_key,
                secret=creds.secret_key,
                anon=creds.access_key is None,
                endpoint_url=creds.endpoint_url,
                client_kwargs=client,
                # aiobotocore builds its aiohttp connector with these: every connection to
                # the endpoint (and any it is redirected to) is checked.
                config_kwargs={
                    "connector_args": {
                        "resolver": self._guard.resolver(),
                        "socket_factory": self._guard.socket_factory,
                    }
                },
                default_block_size=READ_BLOCK,
                skip_instance_cache=True,
            )
        if self.scheme == "gs":
            # The plain GCS file system, built directly: what fsspec's "gs" resolves to depends
            # on GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT at gcsfs's first import, and the other class
            # probes every bucket over gRPC first, waiting 30-60 s per call wherever Google
            # cannot be reached (measured against the emulator).
            from gcsfs.core import GCSFileSystem

            token: Any = None  # the environment's Google credentials
            if creds.service_account:
                token = _guarded_service_account(creds.service_account, self._policy, self._ca_file)
            elif creds.endpoint_url:
                token = "anon"  # a private endpoint (an emulator) without credentials
            loop = fsspec.asyn.get_loop()
            return GCSFileSystem(
                token=token,
                endpoint_url=creds.endpoint_url,
                loop=loop,
                # aiohttp's connector binds the loop it is built on: gcsfs's own.
                session_kwargs={"connector": fsspec.asyn.sync(loop, self._aiohttp_connector)},
                skip_instance_cache=True,
            )
        if self.scheme == "sftp":
            username = creds.username or parts.username
            if not username:
                # asyncssh would fail on it with "'NoneType' object is not iterable".
                raise StorageError(
                    f"{self._display()}: no user name for the SFTP server (give "
                    "credentials.username, or sftp://user@host/ in the URL)"
                )
            port = parts.port or 22
            options: dict[str, Any] = {
                "port": port,
                "username": username,
                "timeout": 30,
                # Without a pinned key the server is not authenticated (documented in
                # docs/imports.md); with one, any other key is refused.
                "known_hosts": _known_hosts(creds.host_key),
            }
            if creds.password:
                options["password"] = creds.password
            if creds.private_key:
                import asyncssh

                options["client_keys"] = [asyncssh.import_private_key(creds.private_key)]
            # Connected to the address checked, not to the name again: it could resolve anew.
            # The pinned host key, if any, is checked whatever the name.
            address = self._policy.resolve(parts.hostname or "", port)
            return fsspec.filesystem("sftp", host=address, skip_instance_cache=True, **options)
        if self.scheme in ("ftp", "ftps"):
            return VerifiedFTPFileSystem(
                host=parts.hostname,
                port=parts.port or 21,
                username=creds.username or parts.username or "anonymous",
                password=creds.password or "",
                tls=self.scheme == "ftps",
                ca_file=self._ca_file,
                outbound=self._policy,
                block_size=READ_BLOCK,
                skip_instance_cache=True,
            )
        if self.scheme in ("http", "https"):
            headers = {}
            if creds.username:
                pair = f"{creds.username}:{creds.password or ''}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            options = {}
            if self._ca_file:
                # Passed on to every aiohttp request (a connector cannot be built off the loop).
                options["ssl"] = _tls_context(self._ca_file)
            return fsspec.filesystem(
                self.scheme,
                get_client=self._aiohttp_session,
                client_kwargs={"headers": headers},
                block_size=READ_BLOCK,
                skip_instance_cache=True,
                **options,
            )
        return fsspec.filesystem("file", auto_mkdir=True, skip_instance_cache=True)

    async def _aiohttp_connector(self) -> aiohttp.TCPConnector:
        return self._guard.connector()

    async def _aiohttp_session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """fsspec's HTTP file system builds its session with this, on its own loop: every
        connection, redirects' included, goes through the guard."""
        kwargs.pop("loop", None)
        return aiohttp.ClientSession(connector=self._guard.connector(), **kwargs)

    def _describe(self, exc: BaseException, where: str) -> str:
        refused = refusal_in(exc)
        if refused is None and self._guard.refused and self._guard.refused in str(exc):
            refused = self._guard.refused  # aiohttp joined several addresses' errors in one
        if refused is not None:
            return f"{where}: refused by the outbound policy: {refused}"
        return describe(exc, where)

    def _display(self) -> str:
        parts = urlsplit(self.url)
        where = parts.netloc.rpartition("@")[2]  # never the user name or credentials
        return f"{parts.scheme}://{where}{parts.path}"


class VerifiedFTPFileSystem(FTPFileSystem):
    """fsspec's FTP file system with FTPS that checks the server's certificate (fsspec's own
    does not) and reuses the TLS session on data connections, which servers such as vsftpd
    require by default."""

    def __init__(
        self,
        *args: Any,
        ca_file: str | None = None,
        outbound: OutboundPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        self._ca_file = ca_file
        self._policy = outbound or OutboundPolicy()
        super().__init__(*args, **kwargs)

    def _connect(self) -> None:
        ftp: ftplib.FTP
        if self.tls:
            context = _tls_context(self._ca_file)
            ftp = _SessionReusingFTP(context=context, timeout=self.timeout, encoding=self.encoding)
        else:
            ftp = ftplib.FTP(timeout=self.timeout, encoding=self.encoding)
        self.ftp = ftp  # before connecting: fsspec's __del__ closes it, connected or not
        # Connected to the address checked; the name stays for TLS (AUTH TLS and the data
        # connections check the certificate against ftp.host). Data connections go to the
        # control connection's peer: ftplib ignores the address in a PASV answer
        # (trust_server_pasv_ipv4_address is off), and EPSV carries none.
        ftp.connect(self._policy.resolve(self.host, self.port), self.port)
        ftp.host = self.host
        ftp.login(*self.cred)  # FTP_TLS.login sends AUTH TLS first


class _SessionReusingFTP(ftplib.FTP_TLS):
    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[Any, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            conn = self.context.wrap_socket(
                conn,
                server_hostname=self.host,
                session=self.sock.session,  # type: ignore[union-attr]
            )
        return conn, size


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's CAs, plus the operator's (CLARION_CONNECTOR_CA_FILE) if any."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _bundle_with_system_cas(ca_file: str) -> str:
    """botocore takes one bundle file, which replaces its own: the system's CAs and the
    operator's, concatenated once into the temporary folder."""
    system = ssl.get_default_verify_paths().cafile
    extra = Path(ca_file).read_bytes()
    bundle = (
        Path(tempfile.gettempdir()) / f"clarion-ca-{hashlib.sha256(extra).hexdigest()[:16]}.pem"
    )
    if not bundle.exists():
        staged = bundle.with_suffix(f".{os.getpid()}.tmp")
        staged.write_bytes((Path(system).read_bytes() if system else b"") + b"\n" + extra)
        staged.replace(bundle)
    return str(bundle)


GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.full_control"  # gcsfs's default
MAX_TOKEN_ANSWER = 64 * 1024  # an OAuth token answer is ~1-2 KiB


def _guarded_service_account(text: str, policy: OutboundPolicy, ca_file: str | None) -> Any:
    """The tenant's service account, whose token exchanges (at its own `token_uri`) connect
    through the outbound policy. gcsfs would refresh it over `requests`, which has no hook on
    the address connected to."""
    from google.oauth2 import service_account

    class GuardedCredentials(service_account.Credentials):
        def refresh(self, request: Any) -> None:
            super().refresh(_GuardedTokenRequest(policy, ca_file))  # type: ignore[no-untyped-call]

    try:
        info = json.loads(text)
        return GuardedCredentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[GCS_SCOPE]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(
            f"credentials.service_account is not a service account key ({exc})"
        ) from None


class _GuardedTokenRequest:
    """google-auth's transport interface over http.client: connects to the address the policy
    checked, keeps the host name for TLS and Host, follows no redirect."""

    def __init__(self, policy: OutboundPolicy, ca_file: str | None) -> None:
        self._policy = policy
        self._ca_file = ca_file

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> _TokenAnswer:
        from google.auth.exceptions import TransportError

        parts = urlsplit(url)
        refusal = self._policy.url_refusal(url, https_only=True)
        if refusal is not None:
            refused = DestinationRefused(f"token_uri {url}: {refusal}")
            raise TransportError(str(refused)) from refused  # type: ignore[no-untyped-call]
        host, port = parts.hostname or "", parts.port or 443
        try:
            try:
                allowed = self._policy.host_allowed(host)
                address = host if allowed else self._policy.resolve(host, port)
            except DestinationRefused as exc:
                refused = DestinationRefused(f"token_uri {url}: {exc}")
                raise TransportError(str(refused)) from refused  # type: ignore[no-untyped-call]
            connection = http.client.HTTPSConnection(
                host, port, timeout=timeout or 30, context=_tls_context(self._ca_file)
            )
            # http.client connects through this attribute; TLS still checks `host`.
            connection._create_connection = lambda where, *args: socket.create_connection(  # type: ignore[attr-defined]
                (address, where[1]), *args
            )
            try:
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                connection.request(method, path or "/", body=body, headers=headers or {})
                answer = connection.getresponse()
                return _TokenAnswer(
                    answer.status, dict(answer.getheaders()), answer.read(MAX_TOKEN_ANSWER)
                )
            finally:
                connection.close()
        except OSError as exc:
            raise TransportError(f"token_uri {url}: {exc}") from exc  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _TokenAnswer:
    status: int
    headers: dict[str, str]
    data: bytes


def _known_hosts(host_key: str | None) -> Any:
    if not host_key:
        return None
    import asyncssh

    key = asyncssh.import_public_key(host_key)
    return ([key], [], [])  # trusted host keys, CA keys, revoked keys


def _fingerprint(entry: dict[str, Any]) -> str:
    for field in ("ETag", "etag", "VersionId"):
        if entry.get(field):
            return f"etag:{str(entry[field]).strip(chr(34))}"
    modified = (
        entry.get("LastModified")
        or entry.get("Last-Modified")  # HTTP
        or entry.get("modify")  # FTP MLSD: YYYYMMDDHHMMSS
        or entry.get("mtime")
        or entry.get("last_modified")
        or entry.get("created")
    )
    if isinstance(modified, datetime):
        modified = modified.isoformat()
    return f"size:{entry.get('size')};mtime:{modified}"


def describe(exc: BaseException, where: str) -> str:
    """One line an operator can act on, from what the protocol library raised (often wrapped
    two or three deep: aiohttp, botocore, asyncssh); never the credentials (they are not in
    these messages)."""
    chain = _chain(exc)
    for test, say in _FAILURES:
        found = next((item for item in chain if test(item)), None)
        if found is not None:
            return f"{where}: {say(found)}"
    kind = type(exc).__name__
    return f"{where}: {kind}: {_text(exc)}"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps: causes, contexts, aiohttp's `os_error`."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        item = pending.pop(0)
        if item is None or any(item is seen for seen in found):
            continue
        found.append(item)
        pending.extend([item.__cause__, item.__context__, getattr(item, "os_error", None)])
    return found


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_ssh(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("asyncssh")


def _http_status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, aiohttp.ClientResponseError) else None


def _http_refusal(exc: BaseException) -> str:
    status = _http_status(exc)
    if status in (401, 403):
        return (
            f"the server refused access (HTTP {status}): check credentials.username and "
            "credentials.password"
        )
    return f"the server answered HTTP {status} ({_text(exc)})"


_FAILURES: tuple[tuple[Any, Any], ...] = (
    (
        # The ssl module's own error: aiohttp's wrapper of it carries no verify_message.
        lambda e: isinstance(e, ssl.SSLCertVerificationError) and type(e).__module__ == "ssl",
        lambda e: (
            f"the server's TLS certificate is not trusted ({e.verify_message}); a "
            "certificate from a private CA needs that CA in CLARION_CONNECTOR_CA_FILE"
        ),
    ),
    (
        lambda e: isinstance(e, ssl.SSLError) and type(e).__module__ == "ssl",
        lambda e: f"the TLS handshake failed ({_text(e)}): does the server speak TLS on that port?",
    ),
    (
        lambda e: type(e).__name__ == "HostKeyNotVerifiable",
        lambda e: "the SSH server's host key is not the one pinned in credentials.host_key",
    ),
    (
        lambda e: _is_ssh(e) and type(e).__name__ == "PermissionDenied",
        lambda e: (
            f"the SSH server refused the login ({_text(e)}): check the user name, "
            "password or private key"
        ),
    ),
    (
        lambda e: isinstance(e, ftplib.error_perm) and str(e).startswith("530"),
        lambda e: (
            f"the FTP server refused the login ({_text(e)}): check the user name and password"
        ),
    ),
    (
        lambda e: isinstance(e, ftplib.error_perm) and "AUTH" in str(e),
        lambda e: (
            f"the FTP server does not offer TLS ({_text(e)}): use ftp://, or enable "
            "FTPS on the server"
        ),
    ),
    (
        lambda e: isinstance(e, ftplib.error_perm),
        lambda e: f"refused by the FTP server ({_text(e)})",
    ),
    (
        lambda e: _is_ssh(e) and type(e).__name__ in ("ConnectionLost", "ProtocolError"),
        lambda e: (
            f"the server ended the SSH handshake ({_text(e)}): is an SSH server "
            "listening on that port?"
        ),
    ),
    (
        lambda e: isinstance(e, ftplib.error_proto | ftplib.error_reply | EOFError),
        lambda e: f"unexpected answer ({_text(e)}): is an FTP server listening on that port?",
    ),
    (
        lambda e: isinstance(e, ConnectionRefusedError),
        lambda e: (
            "connection refused: nothing listens on that host and port, or a firewall "
            "refuses (check the host and port)"
        ),
    ),
    (
        lambda e: isinstance(e, socket.gaierror),
        lambda e: f"cannot resolve the host name ({_text(e)}): check the host in the URL",
    ),
    (
        lambda e: isinstance(e, TimeoutError) or type(e).__name__ == "FSTimeoutError",
        lambda e: (
            "no answer in time: the host is down, a firewall drops the connection, or "
            "the server on that port speaks another protocol"
        ),
    ),
    (
        lambda e: isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH),
        lambda e: f"the host is unreachable ({_text(e)})",
    ),
    (lambda e: _http_status(e) is not None, _http_refusal),
    (
        lambda e: isinstance(e, PermissionError),
        lambda e: (
            f"access refused ({_text(e)}): check the credentials and the permissions "
            "on the folder or bucket"
        ),
    ),
    (
        lambda e: (
            isinstance(e, ConnectionError)
            or type(e).__name__ in ("EndpointConnectionError", "ClientConnectorError")
        ),
        lambda e: f"cannot connect ({_text(e)})",
    ),
)
