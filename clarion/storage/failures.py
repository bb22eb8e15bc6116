"""How a storage failure is told: `StorageError`, and `describe`, which turns what a protocol
library raised into one line an operator can act on."""

from __future__ import annotations

import errno
import ftplib
import socket
import ssl
from typing import Any

import aiohttp


class StorageError(Exception):
    """The storage refused or could not be reached; the message is fit for a run history."""


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


def http_status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, aiohttp.ClientResponseError) else None


def _http_refusal(exc: BaseException) -> str:
    status = http_status(exc)
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
    (lambda e: http_status(e) is not None, _http_refusal),
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
