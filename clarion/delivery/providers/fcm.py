"""FCM HTTP v1 provider: OAuth2 service-account tokens, one data message per device.

See docs/simulators.md (FCM) and Appendix A of the Batch spec (the Android `com.batch` string).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clarion.delivery.providers.base import (
    DeliveryResult,
    Device,
    FcmCredentials,
    Notification,
    Outcome,
    Platform,
    Priority,
    ProviderConfigError,
    PushType,
    measure,
    parse_retry_after,
    transport_failure,
)
from clarion.http2 import Http2Client, HttpRequest, HttpResponse, TransportError
from clarion.outbound import AddressGuard, OutboundPolicy

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google refuses assertions valid for more than one hour
# Renew 5 min before expiry, so a batch never starts with a token that dies while in flight.
REFRESH_MARGIN = 300
QUOTA_RETRY_MIN = 60.0  # FCM asks senders to wait at least a minute after QUOTA_EXCEEDED
MAX_TTL = 2_419_200  # 28 days: FCM's maximum; larger values are INVALID_ARGUMENT
MAX_DATA = 4096  # bytes of a data message's keys and values; above it FCM answers 400
REQUIRED_FIELDS = ("project_id", "private_key", "client_email", "token_uri")

# Keys the Batch Android SDK reads; a custom payload must not shadow them.
_RESERVED_DATA_KEYS = frozenset({"msg", "title", "com.batch"})
_RETRY_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "QUOTA_EXCEEDED"})
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_MESSAGE_HEAD = b'{"message":{"token":'
_DELIVERED = DeliveryResult(Outcome.DELIVERED, status=200)


class _TokenExchangeError(Exception):
    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.reason)
        self.result = result


class FcmProvider:
    platform = Platform.ANDROID

    def __init__(
        self,
        credentials: FcmCredentials,
        client: Http2Client,
        *,
        base_url: str,
        outbound: OutboundPolicy,
        clock: Callable[[], float] = time.time,  # wall clock for the assertion's iat/exp
    ) -> None:
        account = credentials.service_account
        missing = [
            f for f in REQUIRED_FIELDS if not (isinstance(account.get(f), str) and account[f])
        ]
        if missing:
            raise ProviderConfigError(f"FCM service account lacks {', '.join(missing)}")
        self._project_id: str = account["project_id"]
        self._client_email: str = account["client_email"]
        self._token_uri: str = account["token_uri"]
        # The account's JSON is the tenant's, so is its token_uri: under the outbound policy
        # (the send URL is the operator's CLARION_FCM_URL and is not).
        self._token_refusal = outbound.url_refusal(self._token_uri, https_only=True)
        token_host = urlsplit(self._token_uri).hostname or ""
        self._token_guard = (
            None if outbound.host_allowed(token_host) else AddressGuard(outbound, host=token_host)
        )
        key_id = account.get("private_key_id")
        self._key_id = key_id if isinstance(key_id, str) and key_id else None
        self._key = _load_rsa_key(account["private_key"], self._client_email)
        self._client = client
        self._clock = clock
        self._send_url = (
            f"{base_url.rstrip('/')}/v1/projects/{quote(self._project_id, safe='')}/messages:send"
        )
        self._access_token: str | None = None
        self._access_expires = 0.0  # time.monotonic()
        self._lock = asyncio.Lock()  # one token exchange at a time, shared by concurrent sends

    async def send(
        self, notification: Notification, devices: Sequence[Device]
    ) -> list[DeliveryResult]:
        if not devices:
            return []
        try:
            tail = b"," + build_message(notification)[1:] + b"}"
        except (TypeError, orjson.JSONEncodeError) as exc:
            return [DeliveryResult(Outcome.FAILED, reason=f"InvalidPayload: {exc}")] * len(devices)
        try:
            access_token = await self._get_access_token()
        except _TokenExchangeError as exc:
            return [exc.result] * len(devices)
        headers = (
            ("authorization", f"Bearer {access_token}"),
            ("content-type", "application/json; charset=UTF-8"),
        )
        url = self._send_url
        dumps = orjson.dumps
        # The shared message is serialised once; each body only splices the token in front.
        requests = [
            HttpRequest("POST", url, headers, _MESSAGE_HEAD + dumps(d.token) + tail)
            for d in devices
        ]
        responses = await self._client.request_many(requests)
        results: list[DeliveryResult] = []
        unauthenticated = False
        for response in responses:
            if isinstance(response, HttpResponse) and response.status == 200:
                results.append(_DELIVERED)
                continue
            result = _map(response)
            unauthenticated = unauthenticated or (
                result.status == 401 and result.outcome is Outcome.RETRY
            )
            results.append(result)
        if unauthenticated and self._access_token == access_token:
            self._access_token = None  # revoked or expired early: the next send exchanges anew
        measure(Platform.ANDROID, responses, results)
        return results

    async def aclose(self) -> None:
        """The HTTP/2 client is shared and closed by its owner; only forget the token."""
        self._access_token = None

    async def _get_access_token(self) -> str:
        token = self._access_token
        if token is not None and time.monotonic() < self._access_expires:
            return token
        async with self._lock:
            # Another send may have exchanged while this one waited for the lock.
            token = self._access_token
            if token is not None and time.monotonic() < self._access_expires:
                return token
            token, lifetime = await self._exchange()
            self._access_token = token
            self._access_expires = time.monotonic() + max(0.0, lifetime - REFRESH_MARGIN)
            return token

    async def _exchange(self) -> tuple[str, float]:
        """A JWT-bearer grant (RFC 7523) at the account's token_uri: (access token, lifetime)."""
        if self._token_refusal is not None:
            raise _TokenExchangeError(
                DeliveryResult(
                    Outcome.FAILED, reason=f"OutboundPolicy: token_uri {self._token_refusal}"
                )
            )
        iat = int(self._clock())
        assertion = jwt.encode(
            {
                "iss": self._client_email,
                "scope": SCOPE,
                "aud": self._token_uri,
                "iat": iat,
                "exp": iat + ASSERTION_LIFETIME,
            },
            self._key,
            algorithm="RS256",
            headers={"kid": self._key_id} if self._key_id else None,
        )
        body = urlencode({"grant_type": GRANT_TYPE, "assertion": assertion}).encode()
        request = HttpRequest(
            "POST",
            self._token_uri,
            (("content-type", "application/x-www-form-urlencoded"), ("accept", "application/json")),
            body,
            self._token_guard,
        )
        try:
            response = await self._client.request(request)
        except TransportError as exc:
            if exc.refused:
                raise _TokenExchangeError(
                    DeliveryResult(Outcome.FAILED, reason=f"OutboundPolicy: {exc}")
                ) from exc
            # Whether or not the exchange had left, no push did: its outcome is known (not
            # sent), so the retry is no re-send, unlike a push lost in flight (_map).
            raise _TokenExchangeError(
                DeliveryResult(Outcome.RETRY, reason=f"TransportError: {exc}")
            ) from exc
        document = _json_object(response.body)
        status = response.status
        if status == 200:
            token = document.get("access_token")
            lifetime = document.get("expires_in", ASSERTION_LIFETIME)
            if isinstance(token, str) and token and isinstance(lifetime, int | float):
                return token, float(lifetime)
            raise _TokenExchangeError(
                DeliveryResult(Outcome.FAILED, reason="invalid token response", status=status)
            )
        error = document.get("error")
        reason = error if isinstance(error, str) else f"HTTP {status}"
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers)
            raise _TokenExchangeError(
                DeliveryResult(Outcome.RETRY, reason=reason, status=status, retry_after=retry_after)
            )
        raise _TokenExchangeError(DeliveryResult(Outcome.FAILED, reason=reason, status=status))


def build_data(notification: Notification) -> dict[str, str]:
    """The message's `data`: what the Batch SDK reads (strings only, as FCM requires)."""
    batch: dict[str, Any] = {"i": notification.send_id}
    if notification.deeplink:
        batch["l"] = notification.deeplink
    if notification.open_data is not None:
        batch["od"] = dict(notification.open_data)
    if notification.landing is not None:
        batch["ld"] = dict(notification.landing)
    media = notification.media
    if media is not None:
        if media.icon:
            batch["bi"] = {"u": media.icon}
        if media.picture:
            batch["bp"] = {"u": media.picture}
    background = notification.push_type is PushType.BACKGROUND
    if background:
        batch["s"] = True  # silent: the SDK hands the data to the app and shows nothing
    # FCM data values must be strings: anything else is JSON-encoded, as the SDK will parse it.
    data = {
        k: v if isinstance(v, str) else orjson.dumps(v).decode()
        for k, v in notification.custom_payload.items()
        if k not in _RESERVED_DATA_KEYS
    }
    if notification.body is not None:
        data["msg"] = notification.body
    if notification.title is not None:
        data["title"] = notification.title
    data["com.batch"] = orjson.dumps(batch).decode()
    return data


def data_size(data: dict[str, str]) -> int:
    """What FCM counts against MAX_DATA: the UTF-8 bytes of the keys and values."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in data.items())


def build_message(notification: Notification) -> bytes:
    """`{"data": ..., "android": ...}`: the part of the FCM message shared by every device."""
    data = build_data(notification)
    background = notification.push_type is PushType.BACKGROUND
    priority = notification.priority
    if priority is None:
        # High for what the user sees; FCM deprioritises high-priority pushes that show nothing.
        priority = Priority.NORMAL if background else Priority.HIGH
    android: dict[str, str] = {"priority": "HIGH" if priority is Priority.HIGH else "NORMAL"}
    if notification.expires_at is not None:
        remaining = (notification.expires_at - datetime.now(UTC)).total_seconds()
        android["ttl"] = f"{min(MAX_TTL, max(0, math.floor(remaining)))}s"
    # Only the caller's key: FCM collapses only messages it still holds for an offline device,
    # and holds at most 4 collapse keys per device, so a default key per send would drop all
    # but 4 of the sends a phone misses while off, where non-collapsible messages keep 100
    # (docs/delivery.md, decision 0031).
    if notification.collapse_key:
        android["collapse_key"] = notification.collapse_key
    return orjson.dumps({"data": data, "android": android})


def _map(response: HttpResponse | TransportError) -> DeliveryResult:
    if isinstance(response, TransportError):
        return transport_failure(response)
    # An answer, even 429 or 5xx, says FCM did not accept the message: a retry is no re-send.
    status = response.status
    google_status, error_code = _google_error(response.body)
    reason = error_code or google_status or f"HTTP {status}"
    # A bare 404 (a proxy, a wrong base URL) must not delete every token: only Google's own
    # NOT_FOUND / UNREGISTERED answer says the registration token is dead.
    if error_code == "UNREGISTERED" or (status == 404 and google_status == "NOT_FOUND"):
        return DeliveryResult(Outcome.TOKEN_INVALID, reason=reason, status=status)
    if status == 401 and error_code != "THIRD_PARTY_AUTH_ERROR":
        return DeliveryResult(Outcome.RETRY, reason=reason, status=status)
    if status == 429 or error_code == "QUOTA_EXCEEDED":
        wait = max(parse_retry_after(response.headers) or 0.0, QUOTA_RETRY_MIN)
        return DeliveryResult(Outcome.RETRY, reason=reason, status=status, retry_after=wait)
    if status >= 500 or error_code in _RETRY_CODES:
        retry_after = parse_retry_after(response.headers)
        return DeliveryResult(Outcome.RETRY, reason=reason, status=status, retry_after=retry_after)
    return DeliveryResult(Outcome.FAILED, reason=reason, status=status)


def _google_error(body: bytes) -> tuple[str | None, str | None]:
    """(`error.status`, the FcmError `errorCode`) from Google's error body, when present."""
    error = _json_object(body).get("error")
    if not isinstance(error, dict):
        return None, None
    status = error.get("status")
    code = None
    details = error.get("details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict) and detail.get("@type") == _FCM_ERROR_TYPE:
                value = detail.get("errorCode")
                code = value if isinstance(value, str) else None
                break
    return (status if isinstance(status, str) else None), code


def _json_object(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def _load_rsa_key(pem: str, client_email: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProviderConfigError(f"FCM key of {client_email} is not a PEM key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ProviderConfigError(f"FCM key of {client_email} is not an RSA key")
    return key
