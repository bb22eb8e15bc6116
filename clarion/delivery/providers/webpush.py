"""Web Push provider: RFC 8030 delivery, RFC 8291 aes128gcm encryption, RFC 8292 VAPID.

See docs/simulators.md (Web Push) and Appendix A of the Batch spec (the Web SDK payload).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import http_ece
import jwt
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.delivery.providers.base import (
    DeliveryResult,
    Device,
    Notification,
    Outcome,
    Platform,
    Priority,
    ProviderConfigError,
    WebPushCredentials,
    measure,
    parse_retry_after,
    transport_failure,
)
from clarion.http2 import Http2Client, HttpRequest, HttpResponse, TransportError
from clarion.outbound import AddressGuard, OutboundPolicy

DEFAULT_TTL = 2_419_200  # 28 days: Batch's maximum time to live, and what push services keep
# RFC 8292 §2 caps `exp` at 24 h from the request; 23 h leaves an hour for a push service
# whose clock runs behind ours.
VAPID_LIFETIME = 23 * 3600
# Re-sign after 12 h, so a cached header always has at least 11 h left when it is sent.
VAPID_REUSE = 12 * 3600
# RFC 8291 §4: one 4096-byte record minus the 86-byte header, the 16-byte tag and the 1-byte
# padding delimiter. Push services answer 413 above it.
MAX_PLAINTEXT = 3993
MAX_ERROR_TEXT = 500

_TOPIC = re.compile(r"[A-Za-z0-9_\-]{1,32}")  # RFC 8030 §5.4: at most 32 base64url characters
TOPIC_LENGTH = 32
_RESERVED_KEYS = frozenset({"title", "alert", "com.batch"})
_DELIVERED_STATUSES = frozenset({200, 201, 202})


class WebPushProvider:
    platform = Platform.WEB

    def __init__(
        self,
        credentials: WebPushCredentials,
        client: Http2Client,
        *,
        outbound: OutboundPolicy,
        clock: Callable[[], float] = time.time,  # wall clock for VAPID `exp`
    ) -> None:
        if not credentials.subject:
            raise ProviderConfigError("VAPID subject (mailto: or https: URL) is missing")
        self._key = _load_vapid_key(credentials)
        self._credentials = credentials
        self._client = client
        self._outbound = outbound
        self._clock = clock
        # origin -> (Authorization header, time.monotonic() after which it is re-signed)
        self._vapid: dict[str, tuple[str, float]] = {}

    async def send(
        self, notification: Notification, devices: Sequence[Device]
    ) -> list[DeliveryResult]:
        if not devices:
            return []
        try:
            payload = build_payload(notification)
        except (TypeError, orjson.JSONEncodeError) as exc:
            return [DeliveryResult(Outcome.FAILED, reason=f"InvalidPayload: {exc}")] * len(devices)
        if len(payload) > MAX_PLAINTEXT:
            too_large = DeliveryResult(
                Outcome.FAILED, reason=f"PayloadTooLarge: {len(payload)} > {MAX_PLAINTEXT} bytes"
            )
            return [too_large] * len(devices)
        common = self._common_headers(notification)
        headers_by_origin: dict[str, tuple[tuple[str, str], ...]] = {}
        # Browsers give the endpoints: each origin's connections are checked by the outbound
        # policy as libcurl opens them (once per connection, not per notification).
        guards: dict[str, AddressGuard | None] = {}
        results: list[DeliveryResult | None] = [None] * len(devices)
        requests: list[HttpRequest] = []
        positions: list[int] = []
        origins: list[str] = []
        for index, device in enumerate(devices):
            origin = endpoint_origin(device.token)
            if origin is None:
                results[index] = DeliveryResult(Outcome.FAILED, reason="InvalidEndpoint")
                continue
            if origin not in guards:
                guards[origin] = self._guard(origin)
            guard = guards[origin]
            if guard is not None and guard.refused is not None:
                results[index] = _refused(guard.refused)
                continue
            try:
                body = _encrypt(payload, device)
            except (ValueError, http_ece.ECEException) as exc:
                results[index] = DeliveryResult(
                    Outcome.FAILED, reason=f"InvalidSubscriptionKeys: {exc}"
                )
                continue
            headers = headers_by_origin.get(origin)
            if headers is None:
                headers = headers_by_origin[origin] = (
                    ("authorization", self._vapid_header(origin)),
                    *common,
                )
            requests.append(HttpRequest("POST", device.token, headers, body, guard))
            positions.append(index)
            origins.append(origin)
        responses = await self._client.request_many(requests) if requests else []
        for index, origin, response in zip(positions, origins, responses, strict=True):
            result = _map(response)
            if result.status in (401, 403):
                # Refused VAPID (a clock or key change at the push service): sign afresh next time.
                self._vapid.pop(origin, None)
            results[index] = result
        final = [r if r is not None else DeliveryResult(Outcome.FAILED) for r in results]
        measure(Platform.WEB, responses, final)
        return final

    async def aclose(self) -> None:
        """The HTTP/2 client is shared and closed by its owner; only forget the VAPID headers."""
        self._vapid.clear()

    def _guard(self, origin: str) -> AddressGuard | None:
        """None for a host the operator allowed by name; a guard otherwise, that has already
        refused an origin written as a refused address."""
        host = urlsplit(origin).hostname or ""
        if self._outbound.host_allowed(host):
            return None
        guard = AddressGuard(self._outbound, host=host)
        guard.refused = self._outbound.url_refusal(origin, https_only=True)
        return guard

    def _vapid_header(self, origin: str) -> str:
        cached = self._vapid.get(origin)
        now = time.monotonic()
        if cached is not None and now < cached[1]:
            return cached[0]
        token = jwt.encode(
            {
                "aud": origin,
                "exp": int(self._clock()) + VAPID_LIFETIME,
                "sub": self._credentials.subject,
            },
            self._key,
            algorithm="ES256",
        )
        header = f"vapid t={token}, k={self._credentials.vapid_public_key}"
        self._vapid[origin] = (header, now + VAPID_REUSE)
        return header

    @staticmethod
    def _common_headers(notification: Notification) -> tuple[tuple[str, str], ...]:
        ttl = DEFAULT_TTL
        if notification.expires_at is not None:
            remaining = (notification.expires_at - datetime.now(UTC)).total_seconds()
            ttl = min(DEFAULT_TTL, max(0, math.floor(remaining)))
        # Default high, as on APNs and FCM: a normal-urgency push may wait for a phone to wake.
        urgency = "normal" if notification.priority is Priority.NORMAL else "high"
        headers = [
            ("ttl", str(ttl)),
            ("urgency", urgency),
            ("content-encoding", "aes128gcm"),
            ("content-type", "application/octet-stream"),
        ]
        # The send's token when the caller gave no collapse key: a re-send after an unknown
        # outcome then replaces the first copy while the push service still holds it for an
        # offline browser, and two sends never share one (docs/delivery.md, decision 0031).
        headers.append(("topic", topic(notification.collapse_key or notification.send_id)))
        return tuple(headers)


def topic(key: str) -> str:
    """A collapse key as an RFC 8030 Topic: as given when it is one (at most 32 characters of
    the URL-safe base64 alphabet), else the first 32 characters of its SHA-256 in that
    alphabet (192 bits: still one topic per key, never refused)."""
    if _TOPIC.fullmatch(key):
        return key
    digest = hashlib.sha256(key.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:TOPIC_LENGTH]


def build_payload(notification: Notification) -> bytes:
    """The plaintext the Batch Web SDK's service worker reads, identical for every device."""
    # `ni`, the notification's tag, is the send's token: a browser showing a notification with
    # the tag of one it still shows replaces it without alerting again, so a re-send that
    # reaches the browser after the first copy shows once (docs/delivery.md).
    batch: dict[str, Any] = {"i": notification.send_id, "ni": notification.send_id}
    if notification.open_data is not None:
        batch["od"] = dict(notification.open_data)
    if notification.deeplink:
        batch["da"] = {"a": "batch.deeplink", "args": {"l": notification.deeplink}}
    if notification.landing is not None:
        batch["ld"] = dict(notification.landing)
    media = notification.media
    if media is not None:
        if media.icon:
            batch["icu"] = media.icon
        if media.picture:
            batch["imu"] = media.picture
    payload = {k: v for k, v in notification.custom_payload.items() if k not in _RESERVED_KEYS}
    # The SDK types both as required strings; "" rather than a missing key it would show as
    # "undefined".
    payload["title"] = notification.title or ""
    payload["alert"] = notification.body or ""
    payload["com.batch"] = batch
    return orjson.dumps(payload)


def _encrypt(payload: bytes, device: Device) -> bytes:
    """RFC 8291 aes128gcm with a fresh ECDH key per message (the RFC requires one)."""
    if not device.p256dh or not device.auth:
        raise ValueError("p256dh and auth are required")
    receiver_key = _b64url_decode(device.p256dh)
    auth_secret = _b64url_decode(device.auth)
    if len(receiver_key) != 65 or len(auth_secret) != 16:
        raise ValueError("p256dh must be 65 bytes and auth 16 bytes")
    sender_key = ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(
        payload,
        private_key=sender_key,
        dh=receiver_key,
        auth_secret=auth_secret,
        version="aes128gcm",
    )
    return body


def endpoint_origin(endpoint: str) -> str | None:
    """The endpoint's origin (the VAPID `aud`), or None when it is no HTTPS URL."""
    try:
        parts = urlsplit(endpoint)
    except ValueError:
        return None
    host = parts.netloc.rpartition("@")[2].lower()
    if parts.scheme != "https" or not host:
        return None
    # RFC 6454 origins leave the default port out, as push services do when they check `aud`.
    return f"https://{host.removesuffix(':443')}"


def _refused(refusal: str) -> DeliveryResult:
    # Final: the address will not change by waiting (an operator may allow it, then a new
    # send reaches it).
    return DeliveryResult(Outcome.FAILED, reason=f"OutboundPolicy: {refusal}")


def _map(response: HttpResponse | TransportError) -> DeliveryResult:
    if isinstance(response, TransportError):
        if response.refused:
            return _refused(str(response))
        return transport_failure(response)
    # An answer, even 429 or 5xx, says the push service did not accept the message: a retry
    # is no re-send.
    status = response.status
    if status in _DELIVERED_STATUSES:
        return DeliveryResult(Outcome.DELIVERED, status=status)
    reason = f"HTTP {status}: {response.body.decode('utf-8', 'replace')[:MAX_ERROR_TEXT]}"
    if status in (404, 410):
        return DeliveryResult(Outcome.TOKEN_INVALID, reason=reason, status=status)
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers)
        return DeliveryResult(Outcome.RETRY, reason=reason, status=status, retry_after=retry_after)
    return DeliveryResult(Outcome.FAILED, reason=reason, status=status)


def _b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not base64url: {exc}") from exc


def _load_vapid_key(credentials: WebPushCredentials) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(
            credentials.vapid_private_key_pem.encode(), password=None
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ProviderConfigError(f"VAPID private key is not a PEM key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProviderConfigError("VAPID private key is not an EC P-256 key")
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    try:
        declared = _b64url_decode(credentials.vapid_public_key)
    except ValueError as exc:
        raise ProviderConfigError(f"VAPID public key: {exc}") from exc
    if declared != public:
        # Every push would be refused with 403: browsers subscribed with the declared key.
        raise ProviderConfigError("VAPID public key does not match the private key")
    return key
