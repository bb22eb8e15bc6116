"""One small interface over remote file storage: list, read, write and delete files in a folder
given by URL (s3://, sftp://, ftp://, ftps://, https://, file://).

fsspec does the protocols (s3fs, sshfs over asyncssh, its FTP and HTTP file systems); see
docs/decisions/0012-file-connectors.md. Flat-file imports read through it and daily exports
write through it. Calls are blocking (fsspec's FTP file system has no async form), so callers
on the event loop run them with `asyncio.to_thread`; the `Storage` object is not shared
between threads.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import ftplib
import hashlib
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

import fsspec
from fsspec.implementations.ftp import FTPFileSystem

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
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        if self.scheme not in SCHEMES:
            supported = ", ".join(SCHEMES)
            raise StorageError(f"unsupported URL scheme {parts.scheme!r} (use {supported})")
        self._credentials = credentials
        self._ca_file = ca_file
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
            if self.scheme in OBJECT_STORES and self._bucket_exists():
                return []  # a prefix with no object yet: object stores have no folders
            raise StorageError(f"{self._display()} does not exist") from exc
        except Exception as exc:
            raise StorageError(_describe(exc, self._display())) from exc
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
            raise StorageError(_describe(exc, path)) from exc

    def fingerprint(self, path: str) -> str:
        """The file's fingerprint now (to tell whether it changed while it was read)."""
        try:
            return _fingerprint(self._filesystem().info(path))
        except Exception as exc:
            raise StorageError(_describe(exc, path)) from exc

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
            raise StorageError(_describe(exc, path)) from exc
        return path

    def delete(self, path: str) -> None:
        try:
            self._filesystem().rm_file(path)
        except FileNotFoundError:
            pass  # already gone: what was asked
        except Exception as exc:
            raise StorageError(_describe(exc, path)) from exc

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
                raise StorageError(_describe(exc, self._display())) from exc
        return self._fs

    def _connect(self) -> fsspec.AbstractFileSystem:
        parts = urlsplit(self.url)
        creds = self._credentials
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
                token = json.loads(creds.service_account)
            elif creds.endpoint_url:
                token = "anon"  # a private endpoint (an emulator) without credentials
            return GCSFileSystem(
                token=token, endpoint_url=creds.endpoint_url, skip_instance_cache=True
            )
        if self.scheme == "sftp":
            options: dict[str, Any] = {
                "port": parts.port or 22,
                "username": creds.username or parts.username,
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
            return fsspec.filesystem(
                "sftp", host=parts.hostname, skip_instance_cache=True, **options
            )
        if self.scheme in ("ftp", "ftps"):
            return VerifiedFTPFileSystem(
                host=parts.hostname,
                port=parts.port or 21,
                username=creds.username or parts.username or "anonymous",
                password=creds.password or "",
                tls=self.scheme == "ftps",
                ca_file=self._ca_file,
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
                client_kwargs={"headers": headers},
                block_size=READ_BLOCK,
                skip_instance_cache=True,
                **options,
            )
        return fsspec.filesystem("file", auto_mkdir=True, skip_instance_cache=True)

    def _display(self) -> str:
        parts = urlsplit(self.url)
        where = parts.netloc.rpartition("@")[2]  # never the user name or credentials
        return f"{parts.scheme}://{where}{parts.path}"


class VerifiedFTPFileSystem(FTPFileSystem):
    """fsspec's FTP file system with FTPS that checks the server's certificate (fsspec's own
    does not) and reuses the TLS session on data connections, which servers such as vsftpd
    require by default."""

    def __init__(self, *args: Any, ca_file: str | None = None, **kwargs: Any) -> None:
        self._ca_file = ca_file
        super().__init__(*args, **kwargs)

    def _connect(self) -> None:
        if not self.tls:
            super()._connect()
            return
        context = _tls_context(self._ca_file)
        self.ftp = _SessionReusingFTP(context=context, timeout=self.timeout, encoding=self.encoding)
        self.ftp.connect(self.host, self.port)
        self.ftp.login(*self.cred)  # FTP_TLS.login sends AUTH TLS first


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


def _describe(exc: BaseException, where: str) -> str:
    """One line a user can act on; never the credentials (they are not in these messages)."""
    kind = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
    if isinstance(exc, PermissionError | ftplib.error_perm):
        return f"{where}: refused ({text})"
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return f"{where}: cannot connect ({text})"
    return f"{where}: {kind}: {text}"
