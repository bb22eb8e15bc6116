"""The one small interface every push provider implements (APNs, FCM, Web Push).

A provider turns a provider-neutral Notification into its wire format, sends it to many devices
over a shared long-lived HTTP/2 client, and maps each answer onto an Outcome. What to do with an
outcome (log, delete the token, retry) is decided by clarion.delivery.tasks, never here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol

from clarion.http2 import HttpResponse, TransportError
from clarion.metrics import is_counting, note_provider_results


class Platform(StrEnum):
    IOS = "ios"
    ANDROID = "android"
    WEB = "web"


class Outcome(StrEnum):
    DELIVERED = "delivered"  # accepted by the provider -> push_sent
    TOKEN_INVALID = "token_invalid"  # token is dead -> removed, token_deleted
    RETRY = "retry"  # transient (429, 5xx, connection loss) -> retried with backoff
    FAILED = "failed"  # permanent for this message -> push_error


class PushType(StrEnum):
    ALERT = "alert"
    BACKGROUND = "background"


class Priority(StrEnum):
    NORMAL = "normal"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Media:
    icon: str | None = None  # Android / Web
    picture: str | None = None  # large image, all platforms
    audio: str | None = None  # iOS rich attachment
    video: str | None = None  # iOS rich attachment


@dataclass(frozen=True, slots=True)
class Notification:
    """What to show, rendered once per send and language; identical for every device."""

    send_id: str  # Batch's `com.batch.i`: the SDK echoes it back in open reports
    title: str | None = None
    body: str | None = None
    deeplink: str | None = None
    custom_payload: Mapping[str, Any] = field(default_factory=dict)  # top-level payload keys
    media: Media | None = None
    priority: Priority | None = None  # None: the provider's default
    push_type: PushType = PushType.ALERT
    expires_at: datetime | None = None  # absolute (UTC); from time_to_live
    collapse_key: str | None = None
    open_data: Mapping[str, Any] | None = None  # Batch's `com.batch.od`
    # Batch's `com.batch.ld`: the message a tap opens in the app, in the device's language,
    # its theme resolved (clarion.delivery.content.pick_landing).
    landing: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """Where one notification goes."""

    token: str  # APNs device token, FCM registration token, or Web Push endpoint URL
    p256dh: str | None = None  # Web Push subscription public key (base64url)
    auth: str | None = None  # Web Push subscription auth secret (base64url)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: Outcome
    # The provider's reason, verbatim (APNs `reason`, FCM `errorCode`/`status`, Web Push body).
    reason: str | None = None
    status: int | None = None  # HTTP status, when there was an answer
    retry_after: float | None = None  # seconds, from Retry-After or the provider's rules
    # The request may have reached the provider and been accepted (it was written on a stream,
    # then timed out or the connection dropped): a retry may reach the device twice, and is
    # counted as re-sent (docs/delivery.md).
    unknown_outcome: bool = False


@dataclass(frozen=True, slots=True)
class ApnsCredentials:
    key_id: str
    team_id: str
    private_key_pem: str  # the .p8 file's content (PKCS#8 EC P-256)
    topic: str  # bundle id
    sandbox: bool = False


@dataclass(frozen=True, slots=True)
class FcmCredentials:
    service_account: Mapping[str, Any]  # the service-account JSON (project_id, private_key, ...)


@dataclass(frozen=True, slots=True)
class WebPushCredentials:
    vapid_private_key_pem: str  # PKCS#8 EC P-256
    vapid_public_key: str  # base64url uncompressed point: the applicationServerKey
    subject: str  # "mailto:..." or "https://..." (RFC 8292 `sub`)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def transport_failure(error: TransportError) -> DeliveryResult:
    """No answer to a push: retried. Its outcome is unknown when the request had been written
    on a stream (the provider may have accepted it, so the retry may reach the device twice);
    known when it never left (connect or TLS failure)."""
    return DeliveryResult(
        Outcome.RETRY, reason=f"TransportError: {error}", unknown_outcome=error.written
    )


def measure(
    platform: Platform,
    responses: Sequence[HttpResponse | TransportError],
    results: Sequence[DeliveryResult],
) -> None:
    """The metrics of a provider's batch: its answers' latencies, and how many pushes it asks
    to retry (the retries themselves are new batches, not events)."""
    if not is_counting():
        return
    note_provider_results(
        platform.value,
        [r.elapsed for r in responses if type(r) is HttpResponse],
        sum(1 for r in results if r.outcome is Outcome.RETRY),
    )


class ProviderConfigError(Exception):
    """The provider cannot send at all with these credentials (bad key, missing field)."""


class Provider(Protocol):
    platform: Platform

    async def send(
        self, notification: Notification, devices: Sequence[Device]
    ) -> list[DeliveryResult]:
        """Send to every device concurrently; one result per device, in the same order.

        Never raises for a per-device problem or a transport failure: those are results.
        """
        ...

    async def aclose(self) -> None: ...
