"""APNs provider: token-authenticated HTTP/2 pushes to `/3/device/{token}`, mapped onto Outcomes.

See docs/simulators.md (APNs) and Appendix A of the Batch spec (the `com.batch` object).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.delivery.providers.base import (
    ApnsCredentials,
    DeliveryResult,
    Device,
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

# Apple refuses a provider token refreshed more often than every 20 min (TooManyProviderToken-
# Updates) and rejects one older than 60 min (ExpiredProviderToken); 40 min sits in the middle.
TOKEN_REFRESH_AFTER = 40 * 60
MAX_PAYLOAD = 4096  # bytes, for alert and background pushes (only VoIP gets 5120)
MAX_COLLAPSE_ID = 64  # bytes; APNs answers BadCollapseId above it
# The namespace of the name-based (version 5) UUIDs Clarion gives as `apns-id`: the UUID5 of
# "clarion apns-id" in the URL namespace, fixed forever so that a re-send made by another
# version of Clarion carries the same id as the first attempt.
APNS_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "clarion apns-id")

_RESERVED_KEYS = frozenset({"aps", "com.batch"})
# UNNotificationAttachment needs a type hint: the Batch extension downloads to a temporary file
# without the URL's extension, so `com.batch.at.t` must name the UTI. These are the types Apple
# lists as supported attachments.
_UTI_BY_EXTENSION = {
    "jpg": "public.jpeg",
    "jpeg": "public.jpeg",
    "png": "public.png",
    "gif": "com.compuserve.gif",
    "mp3": "public.mp3",
    "m4a": "public.mpeg-4-audio",
    "aif": "public.aiff-audio",
    "aiff": "public.aiff-audio",
    "wav": "com.microsoft.waveform-audio",
    "mp4": "public.mpeg-4",
    "m4v": "public.mpeg-4",
    "mpg": "public.mpeg",
    "mpeg": "public.mpeg",
    "avi": "public.avi",
}
_DELIVERED = DeliveryResult(Outcome.DELIVERED, status=200)


class ApnsProvider:
    platform = Platform.IOS

    def __init__(
        self,
        credentials: ApnsCredentials,
        client: Http2Client,
        *,
        production_url: str,
        sandbox_url: str,
        clock: Callable[[], float] = time.time,  # wall clock for `iat`; tests move it
    ) -> None:
        for name in ("key_id", "team_id", "topic"):
            if not getattr(credentials, name):
                raise ProviderConfigError(f"APNs credentials lack {name}")
        self._key = _load_p8(credentials)
        self._credentials = credentials
        self._client = client
        self._clock = clock
        base = sandbox_url if credentials.sandbox else production_url
        self._url_prefix = base.rstrip("/") + "/3/device/"
        self._token = ""
        self._token_iat = 0.0

    async def send(
        self, notification: Notification, devices: Sequence[Device]
    ) -> list[DeliveryResult]:
        if not devices:
            return []
        try:
            payload = build_payload(notification)
        except (TypeError, orjson.JSONEncodeError) as exc:
            return [DeliveryResult(Outcome.FAILED, reason=f"InvalidPayload: {exc}")] * len(devices)
        if len(payload) > MAX_PAYLOAD:
            # Same reason APNs would give, without 2,000 round trips to hear it.
            return [DeliveryResult(Outcome.FAILED, reason="PayloadTooLarge")] * len(devices)
        token = self._provider_token()
        headers = self._headers(notification, token)
        prefix = self._url_prefix
        ids = ApnsIds(notification.send_id)
        requests = [
            HttpRequest(
                "POST",
                prefix + _path_token(d.token),
                headers,
                payload,
                own_header=("apns-id", ids.of(d.token)),
            )
            for d in devices
        ]
        responses = await self._client.request_many(requests)
        results: list[DeliveryResult] = []
        expired = False
        for response in responses:
            if isinstance(response, HttpResponse) and response.status == 200:
                results.append(_DELIVERED)
                continue
            result = _map(response)
            expired = expired or result.reason == "ExpiredProviderToken"
            results.append(result)
        measure(Platform.IOS, responses, results)
        if expired and self._token == token:
            self._token = ""  # the next send signs a fresh one
        return results

    async def aclose(self) -> None:
        """The HTTP/2 client is shared and closed by its owner; only forget the token."""
        self._token = ""

    def _provider_token(self) -> str:
        now = self._clock()
        if not self._token or now - self._token_iat >= TOKEN_REFRESH_AFTER:
            iat = int(now)
            self._token = jwt.encode(
                {"iss": self._credentials.team_id, "iat": iat},
                self._key,
                algorithm="ES256",
                headers={"kid": self._credentials.key_id},
            )
            self._token_iat = float(iat)
        return self._token

    def _headers(self, notification: Notification, token: str) -> tuple[tuple[str, str], ...]:
        background = notification.push_type is PushType.BACKGROUND
        # Apple requires priority 5 for background pushes; alerts default to 10 (immediate).
        priority = "5" if background or notification.priority is Priority.NORMAL else "10"
        expires_at = notification.expires_at
        headers = [
            ("authorization", f"bearer {token}"),
            ("apns-topic", self._credentials.topic),
            ("apns-push-type", "background" if background else "alert"),
            ("apns-priority", priority),
            # 0: deliver now or never; otherwise APNs stores the push until then.
            ("apns-expiration", str(int(expires_at.timestamp())) if expires_at else "0"),
        ]
        # The send's token when the caller gave no collapse key: a re-send after an unknown
        # outcome then replaces the first copy on the device instead of showing beside it,
        # and two sends never share one (docs/delivery.md, decision 0031). A background push
        # shows nothing, so there is nothing to collapse.
        key = notification.collapse_key or (None if background else notification.send_id)
        if key:
            headers.append(("apns-collapse-id", _collapse_id(key)))
        return tuple(headers)


def build_payload(notification: Notification) -> bytes:
    """The APNs JSON body, identical for every device of a send."""
    aps: dict[str, Any] = {}
    batch: dict[str, Any] = {"i": notification.send_id}
    if notification.push_type is PushType.BACKGROUND:
        aps["content-available"] = 1
    else:
        alert: dict[str, str] = {}
        if notification.title is not None:
            alert["title"] = notification.title
        if notification.body is not None:
            alert["body"] = notification.body
        aps["alert"] = alert
        aps["sound"] = "default"
        attachment = _attachment(notification)
        if attachment is not None:
            aps["mutable-content"] = 1  # wakes the Batch notification service extension
            batch["at"] = attachment
    if notification.deeplink:
        batch["l"] = notification.deeplink
    if notification.open_data is not None:
        batch["od"] = dict(notification.open_data)
    if notification.landing is not None:
        batch["ld"] = dict(notification.landing)
    payload = {k: v for k, v in notification.custom_payload.items() if k not in _RESERVED_KEYS}
    payload["aps"] = aps
    payload["com.batch"] = batch
    return orjson.dumps(payload)


def _attachment(notification: Notification) -> dict[str, str] | None:
    """One rich attachment (the Batch extension shows one): picture, else video, else audio."""
    media = notification.media
    if media is None:
        return None
    for url, fallback in (
        (media.picture, "public.jpeg"),
        (media.video, "public.mpeg-4"),
        (media.audio, "public.mp3"),
    ):
        if url:
            extension = url.split("?", 1)[0].split("#", 1)[0].rsplit(".", 1)[-1].lower()
            return {"u": url, "t": _UTI_BY_EXTENSION.get(extension, fallback)}
    return None


class ApnsIds:
    """The `apns-id` of a send's notification to each device: the UUID5 of the send's token and
    the device token in APNS_ID_NAMESPACE, so every attempt (a retry batch, a re-send after a
    worker died) carries the id of the first, without storing it. APNs wants it canonical:
    lowercase hex in 8-4-4-4-12 groups.

    The SHA-1 of the namespace and the send is prepared once per send, and the version and
    variant are set on the hex digest's characters: 1.7 µs a device where uuid.uuid5 takes 11
    (loaded 2-core machine)."""

    __slots__ = ("_prefix",)

    def __init__(self, send_id: str) -> None:
        # uuid5(namespace, name) hashes the namespace's 16 bytes then the name's UTF-8.
        # SHA-1 because RFC 9562 fixes it for version 5; nothing secret depends on it.
        self._prefix = hashlib.sha1(
            APNS_ID_NAMESPACE.bytes + send_id.encode() + b"/", usedforsecurity=False
        )

    def of(self, device_token: str) -> str:
        digest = self._prefix.copy()
        digest.update(device_token.encode())
        h = digest.hexdigest()
        # Character 12 is the version (5); character 16 carries the variant bits (10xx).
        return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


# A hex digit with its two high bits set to the RFC 4122 variant (binary 10).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _collapse_id(key: str) -> str:
    """Long keys become their SHA-256 (64 hex characters): still one id per key, never rejected."""
    if len(key.encode()) <= MAX_COLLAPSE_ID:
        return key
    return hashlib.sha256(key.encode()).hexdigest()


def _path_token(token: str) -> str:
    """Real tokens are hex; anything else is quoted so APNs answers BadDeviceToken (not a
    malformed URL that would fail as a transport error and be retried forever)."""
    return token if token.isascii() and token.isalnum() else quote(token, safe="")


def _map(response: HttpResponse | TransportError) -> DeliveryResult:
    if isinstance(response, TransportError):
        return transport_failure(response)
    # An answer, even 429 or 5xx, says what APNs did: it did not accept the push, so a retry is
    # no re-send.
    status = response.status
    reason = _reason(response.body)
    if status == 410 or (status == 400 and reason == "BadDeviceToken"):
        return DeliveryResult(Outcome.TOKEN_INVALID, reason=reason or "Unregistered", status=status)
    if status == 429 or status >= 500 or (status == 403 and reason == "ExpiredProviderToken"):
        return DeliveryResult(
            Outcome.RETRY,
            reason=reason or f"HTTP {status}",
            status=status,
            retry_after=parse_retry_after(response.headers),
        )
    return DeliveryResult(Outcome.FAILED, reason=reason or f"HTTP {status}", status=status)


def _reason(body: bytes) -> str | None:
    if not body:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    reason = document.get("reason") if isinstance(document, dict) else None
    return reason if isinstance(reason, str) else None


def _load_p8(credentials: ApnsCredentials) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(
            credentials.private_key_pem.encode(), password=None
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProviderConfigError(f"APNs key {credentials.key_id} is not a .p8 key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProviderConfigError(f"APNs key {credentials.key_id} is not an EC P-256 key")
    return key
