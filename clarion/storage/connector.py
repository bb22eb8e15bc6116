"""The `Storage` interface: list, read, write and delete files in a folder given by URL, over
the fsspec file system its scheme names."""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import os
import posixpath
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

from clarion.outbound import AddressGuard, OutboundPolicy, refusal_in
from clarion.storage.failures import StorageError, describe, http_status
from clarion.storage.ftp import VerifiedFTPFileSystem
from clarion.storage.gcs import guarded_service_account
from clarion.storage.tls import bundle_with_system_cas, tls_context

SCHEMES = ("s3", "gs", "sftp", "ftp", "ftps", "https", "http", "file")
OBJECT_STORES = ("s3", "gs")  # an object appears only once fully written
READ_BLOCK = 4 * 1024 * 1024  # per request: FTP and S3 ranged reads, HTTP streaming
WRITE_BLOCK = 8 * 1024 * 1024  # S3 multipart parts must be at least 5 MiB


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
                and http_status(cause) not in (404, 410)
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
                client["verify"] = bundle_with_system_cas(self._ca_file)
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
                token = guarded_service_account(creds.service_account, self._policy, self._ca_file)
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
                options["ssl"] = tls_context(self._ca_file)
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
