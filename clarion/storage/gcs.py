"""A GCS service account whose OAuth token exchanges go through the outbound policy."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from clarion.outbound import DestinationRefused, OutboundPolicy
from clarion.storage.failures import StorageError
from clarion.storage.tls import tls_context

GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.full_control"  # gcsfs's default
MAX_TOKEN_ANSWER = 64 * 1024  # an OAuth token answer is ~1-2 KiB


def guarded_service_account(text: str, policy: OutboundPolicy, ca_file: str | None) -> Any:
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
                host, port, timeout=timeout or 30, context=tls_context(self._ca_file)
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
