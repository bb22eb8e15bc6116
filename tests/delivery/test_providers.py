"""The three push providers against the simulators, over real TLS and HTTP/2.

See docs/simulators.md for what the simulated APNs, FCM and Web Push services answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clarion.delivery.providers import ApnsProvider, FcmProvider, WebPushProvider
from clarion.delivery.providers.base import (
    ApnsCredentials,
    DeliveryResult,
    Device,
    FcmCredentials,
    Media,
    Notification,
    Outcome,
    Priority,
    Provider,
    ProviderConfigError,
    PushType,
    WebPushCredentials,
)
from clarion.delivery.providers.webpush import topic as webpush_topic
from clarion.http2 import Http2Client
from tests.support.simulator import LOCAL_SERVERS_POLICY, SimulatorHandle

MANY = 2_000
CUSTOM = {"order": "A-17", "count": 3, "nested": {"k": [1, 2]}}
OPEN_DATA = {"campaign": "spring"}
DEEPLINK = "https://example.com/promo?x=1"
PICTURE = "https://cdn.example.com/big.png"
ICON = "https://cdn.example.com/icon.png"


def notification(**overrides: Any) -> Notification:
    fields: dict[str, Any] = {
        "send_id": "send-" + secrets.token_hex(6),
        "title": "Hello!",
        "body": "How's it going?",
        "deeplink": DEEPLINK,
        "custom_payload": CUSTOM,
        "open_data": OPEN_DATA,
    }
    fields.update(overrides)
    return Notification(**fields)


def apns_token() -> str:
    return secrets.token_hex(32)


def fcm_token() -> str:
    return "sim:" + secrets.token_urlsafe(120)


def received(control: httpx.Client, service: str, token: str) -> dict[str, Any]:
    """{"count", "messages": [{"headers", "payload", "received_at"}]} for one token."""
    response = control.get(f"/_sim/{service}/tokens/{token}")
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def last_message(control: httpx.Client, service: str, token: str) -> dict[str, Any]:
    message: dict[str, Any] = received(control, service, token)["messages"][-1]
    return message


def fail_next(control: httpx.Client, service: str, token: str, **failure: Any) -> None:
    control.post(f"/_sim/{service}/tokens/{token}/fail", json=failure).raise_for_status()


def uninstall(control: httpx.Client, service: str, token: str) -> None:
    control.post(f"/_sim/{service}/tokens/{token}/uninstall").raise_for_status()


def stats(control: httpx.Client, service: str) -> dict[str, int]:
    response = control.get("/_sim/stats")
    response.raise_for_status()
    counters: dict[str, int] = response.json()[service]
    return counters


def subscribe(control: httpx.Client, credentials: WebPushCredentials) -> Device:
    """A simulated browser's pushManager.subscribe() for this applicationServerKey."""
    response = control.post(
        "/_sim/webpush/subscriptions",
        json={"application_server_key": credentials.vapid_public_key},
    )
    response.raise_for_status()
    subscription = response.json()
    keys = subscription["keys"]
    return Device(subscription["endpoint"], keys["p256dh"], keys["auth"])


def subscription_id(device: Device) -> str:
    """The simulator names a Web Push subscription by its endpoint's last path segment."""
    return device.token.rsplit("/", 1)[1]


def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class ShiftedClock:
    """The wall clock moved by `offset` seconds: lets a test sign tokens in the past."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


# --- APNs --------------------------------------------------------------------------------------


class TestApns:
    async def test_success_sends_batch_payload_and_headers(
        self, apns: ApnsProvider, sim_control: httpx.Client, apns_credentials: ApnsCredentials
    ) -> None:
        token = apns_token()
        expires_at = datetime.now(UTC) + timedelta(hours=1)
        note = notification(
            media=Media(picture=PICTURE), expires_at=expires_at, collapse_key="promo"
        )

        assert await apns.send(note, [Device(token)]) == [
            DeliveryResult(Outcome.DELIVERED, status=200)
        ]

        message = last_message(sim_control, "apns", token)
        payload, headers = message["payload"], message["headers"]
        assert payload["aps"] == {
            "alert": {"title": "Hello!", "body": "How's it going?"},
            "sound": "default",
            "mutable-content": 1,
        }
        assert payload["com.batch"] == {
            "i": note.send_id,
            "l": DEEPLINK,
            "od": OPEN_DATA,
            "at": {"u": PICTURE, "t": "public.png"},
        }
        assert {k: payload[k] for k in CUSTOM} == CUSTOM
        assert headers["apns-topic"] == apns_credentials.topic
        assert headers["apns-push-type"] == "alert"
        assert headers["apns-priority"] == "10"
        assert headers["apns-expiration"] == str(int(expires_at.timestamp()))
        assert headers["apns-collapse-id"] == "promo"

    @pytest.mark.parametrize(
        ("priority", "push_type", "expected"),
        [
            (None, PushType.ALERT, "10"),
            (Priority.HIGH, PushType.ALERT, "10"),
            (Priority.NORMAL, PushType.ALERT, "5"),
            (Priority.HIGH, PushType.BACKGROUND, "5"),  # Apple requires 5 for background
        ],
    )
    async def test_priority(
        self,
        apns: ApnsProvider,
        sim_control: httpx.Client,
        priority: Priority | None,
        push_type: PushType,
        expected: str,
    ) -> None:
        token = apns_token()
        note = notification(priority=priority, push_type=push_type)

        [result] = await apns.send(note, [Device(token)])

        assert result.outcome is Outcome.DELIVERED
        assert last_message(sim_control, "apns", token)["headers"]["apns-priority"] == expected

    async def test_background_push_is_silent(
        self, apns: ApnsProvider, sim_control: httpx.Client
    ) -> None:
        token = apns_token()
        note = notification(push_type=PushType.BACKGROUND, title=None, body=None)

        await apns.send(note, [Device(token)])

        message = last_message(sim_control, "apns", token)
        assert message["payload"]["aps"] == {"content-available": 1}
        assert message["headers"]["apns-push-type"] == "background"
        assert message["headers"]["apns-expiration"] == "0"
        assert "apns-collapse-id" not in message["headers"]

    async def test_long_collapse_key_is_hashed_to_64_bytes(
        self, apns: ApnsProvider, sim_control: httpx.Client
    ) -> None:
        token = apns_token()

        [result] = await apns.send(notification(collapse_key="k" * 100), [Device(token)])

        assert result.outcome is Outcome.DELIVERED
        collapse_id = last_message(sim_control, "apns", token)["headers"]["apns-collapse-id"]
        assert re.fullmatch(r"[0-9a-f]{64}", collapse_id)

    async def test_dead_tokens_are_token_invalid(
        self, apns: ApnsProvider, sim_control: httpx.Client
    ) -> None:
        dead, live = apns_token(), apns_token()
        uninstall(sim_control, "apns", dead)

        results = await apns.send(notification(), [Device(dead), Device("not-hex"), Device(live)])

        assert results == [
            DeliveryResult(Outcome.TOKEN_INVALID, reason="Unregistered", status=410),
            DeliveryResult(Outcome.TOKEN_INVALID, reason="BadDeviceToken", status=400),
            DeliveryResult(Outcome.DELIVERED, status=200),
        ]

    async def test_error_reason_is_verbatim(
        self,
        apns_credentials: ApnsCredentials,
        http_client: Http2Client,
        sim: SimulatorHandle,
    ) -> None:
        wrong_topic = dataclasses.replace(apns_credentials, topic="com.example.someone-else")
        provider = ApnsProvider(
            wrong_topic, http_client, production_url=sim.base_url, sandbox_url=sim.base_url
        )

        results = await provider.send(notification(), [Device(apns_token())])

        assert results == [DeliveryResult(Outcome.FAILED, reason="TopicDisallowed", status=400)]

    async def test_transient_errors_are_retried_with_retry_after(
        self, apns: ApnsProvider, sim_control: httpx.Client
    ) -> None:
        unavailable, throttled = apns_token(), apns_token()
        fail_next(sim_control, "apns", unavailable, status=503, retry_after=30)
        fail_next(sim_control, "apns", throttled, status=429)

        results = await apns.send(notification(), [Device(unavailable), Device(throttled)])

        assert results == [
            DeliveryResult(Outcome.RETRY, "ServiceUnavailable", status=503, retry_after=30.0),
            DeliveryResult(Outcome.RETRY, "TooManyRequests", status=429, retry_after=None),
        ]
        again = await apns.send(notification(), [Device(unavailable), Device(throttled)])
        assert [r.outcome for r in again] == [Outcome.DELIVERED, Outcome.DELIVERED]

    async def test_key_not_issued_by_apple_is_invalid_provider_token(
        self, apns_credentials: ApnsCredentials, http_client: Http2Client, sim: SimulatorHandle
    ) -> None:
        forged = dataclasses.replace(
            apns_credentials, private_key_pem=pem(ec.generate_private_key(ec.SECP256R1()))
        )
        provider = ApnsProvider(
            forged, http_client, production_url=sim.base_url, sandbox_url=sim.base_url
        )

        results = await provider.send(notification(), [Device(apns_token())] * 3)

        assert (
            results
            == [DeliveryResult(Outcome.FAILED, reason="InvalidProviderToken", status=403)] * 3
        )

    async def test_expired_provider_token_is_resigned(
        self,
        apns_credentials: ApnsCredentials,
        http_client: Http2Client,
        sim: SimulatorHandle,
        sim_control: httpx.Client,
    ) -> None:
        clock = ShiftedClock(-2 * 3600)  # a token signed two hours ago: Apple's limit is one
        provider = ApnsProvider(
            apns_credentials,
            http_client,
            production_url=sim.base_url,
            sandbox_url=sim.base_url,
            clock=clock,
        )
        token = apns_token()

        [expired] = await provider.send(notification(), [Device(token)])
        clock.offset = 0
        [delivered] = await provider.send(notification(), [Device(token)])

        assert expired == DeliveryResult(Outcome.RETRY, reason="ExpiredProviderToken", status=403)
        assert delivered.outcome is Outcome.DELIVERED

    async def test_provider_token_is_reused_then_resigned_after_40_minutes(
        self,
        apns_credentials: ApnsCredentials,
        http_client: Http2Client,
        sim: SimulatorHandle,
    ) -> None:
        # Rather than compare header strings, the test reads which token was sent
        # from Apple's verdict: a token signed "in the future" (iat > now + 5 min) is refused.
        clock = ShiftedClock(0)
        provider = ApnsProvider(
            apns_credentials,
            http_client,
            production_url=sim.base_url,
            sandbox_url=sim.base_url,
            clock=clock,
        )
        device = Device(apns_token())

        [first] = await provider.send(notification(), [device])
        clock.offset = 39 * 60  # a fresh token now would be refused: the first one is reused
        [reused] = await provider.send(notification(), [device])
        clock.offset = 41 * 60  # past 40 min: re-signed, with an iat the simulator refuses
        [resigned] = await provider.send(notification(), [device])

        assert first.outcome is Outcome.DELIVERED
        assert reused.outcome is Outcome.DELIVERED
        assert resigned == DeliveryResult(Outcome.FAILED, "InvalidProviderToken", status=403)

    async def test_sandbox_credentials_use_the_sandbox_url(
        self, apns_credentials: ApnsCredentials, http_client: Http2Client, sim: SimulatorHandle
    ) -> None:
        sandbox = dataclasses.replace(apns_credentials, sandbox=True)
        # Nothing listens on port 9: production would be a transport error.
        provider = ApnsProvider(
            sandbox, http_client, production_url="https://127.0.0.1:9", sandbox_url=sim.base_url
        )

        [result] = await provider.send(notification(), [Device(apns_token())])

        assert result.outcome is Outcome.DELIVERED

    async def test_oversized_payload_fails_without_a_request(
        self, apns: ApnsProvider, sim_control: httpx.Client
    ) -> None:
        note = notification(custom_payload={"blob": "x" * 5000})

        results = await apns.send(note, [Device(apns_token())] * 2)

        assert results == [DeliveryResult(Outcome.FAILED, reason="PayloadTooLarge")] * 2
        assert stats(sim_control, "apns")["requests"] == 0

    async def test_many_devices_in_one_send(
        self, apns: ApnsProvider, sim_control: httpx.Client
    ) -> None:
        tokens = [apns_token() for _ in range(MANY)]

        results = await apns.send(notification(), [Device(t) for t in tokens])

        assert [r.outcome for r in results] == [Outcome.DELIVERED] * MANY
        assert stats(sim_control, "apns")["accepted"] == MANY
        assert received(sim_control, "apns", tokens[-1])["count"] == 1

    def test_bad_key_is_a_config_error(
        self, apns_credentials: ApnsCredentials, http_client: Http2Client
    ) -> None:
        rsa_key = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        for bad in ("not a key", rsa_key):
            with pytest.raises(ProviderConfigError):
                ApnsProvider(
                    dataclasses.replace(apns_credentials, private_key_pem=bad),
                    http_client,
                    production_url="https://unused",
                    sandbox_url="https://unused",
                )


# --- FCM ---------------------------------------------------------------------------------------


class TestFcm:
    async def test_success_sends_a_batch_data_message(
        self, fcm: FcmProvider, sim_control: httpx.Client
    ) -> None:
        token = fcm_token()
        note = notification(
            media=Media(icon=ICON, picture=PICTURE),
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            collapse_key="promo",
        )

        assert await fcm.send(note, [Device(token)]) == [
            DeliveryResult(Outcome.DELIVERED, status=200)
        ]

        sent = last_message(sim_control, "fcm", token)
        message = sent["payload"]["message"]
        assert message["token"] == token
        data = message["data"]
        assert all(isinstance(v, str) for v in data.values())  # FCM accepts only strings
        assert data["msg"] == "How's it going?"
        assert data["title"] == "Hello!"
        assert json.loads(data["com.batch"]) == {
            "i": note.send_id,
            "l": DEEPLINK,
            "od": OPEN_DATA,
            "bi": {"u": ICON},
            "bp": {"u": PICTURE},
        }
        assert data["order"] == "A-17"
        assert json.loads(data["count"]) == 3
        assert json.loads(data["nested"]) == {"k": [1, 2]}
        android = message["android"]
        assert android["priority"] == "HIGH"
        assert android["collapse_key"] == "promo"
        ttl = re.fullmatch(r"(\d+)s", android["ttl"])
        assert ttl is not None
        assert 3590 <= int(ttl.group(1)) <= 3600
        assert sent["headers"]["authorization"].startswith("Bearer ")

    async def test_background_message_is_silent_and_normal_priority(
        self, fcm: FcmProvider, sim_control: httpx.Client
    ) -> None:
        token = fcm_token()
        note = notification(push_type=PushType.BACKGROUND, title=None, body=None)

        await fcm.send(note, [Device(token)])

        message = last_message(sim_control, "fcm", token)["payload"]["message"]
        assert "msg" not in message["data"]
        assert "title" not in message["data"]
        assert json.loads(message["data"]["com.batch"])["s"] is True
        assert message["android"] == {"priority": "NORMAL"}

    async def test_uninstalled_token_is_token_invalid(
        self, fcm: FcmProvider, sim_control: httpx.Client
    ) -> None:
        token = fcm_token()
        uninstall(sim_control, "fcm", token)

        results = await fcm.send(notification(), [Device(token)])

        assert results == [DeliveryResult(Outcome.TOKEN_INVALID, reason="UNREGISTERED", status=404)]

    async def test_error_code_is_verbatim(self, fcm: FcmProvider) -> None:
        results = await fcm.send(notification(), [Device("not a registration token!")])

        assert results == [DeliveryResult(Outcome.FAILED, reason="INVALID_ARGUMENT", status=400)]

    async def test_project_of_another_account_is_sender_id_mismatch(
        self,
        fcm_account: dict[str, Any],
        other_fcm_account: dict[str, Any],
        http_client: Http2Client,
        sim: SimulatorHandle,
    ) -> None:
        account = {**fcm_account, "project_id": other_fcm_account["project_id"]}
        provider = FcmProvider(
            FcmCredentials(account),
            http_client,
            base_url=sim.base_url,
            outbound=LOCAL_SERVERS_POLICY,
        )

        results = await provider.send(notification(), [Device(fcm_token())])

        assert results == [DeliveryResult(Outcome.FAILED, reason="SENDER_ID_MISMATCH", status=403)]

    async def test_transient_errors_are_retried(
        self, fcm: FcmProvider, sim_control: httpx.Client
    ) -> None:
        tokens = [fcm_token() for _ in range(4)]
        fail_next(sim_control, "fcm", tokens[0], status=503, retry_after=12)
        fail_next(sim_control, "fcm", tokens[1], status=500)
        fail_next(sim_control, "fcm", tokens[2], status=429, retry_after=5)
        fail_next(sim_control, "fcm", tokens[3], status=429, retry_after=120)

        results = await fcm.send(notification(), [Device(t) for t in tokens])

        assert results == [
            DeliveryResult(Outcome.RETRY, reason="UNAVAILABLE", status=503, retry_after=12.0),
            DeliveryResult(Outcome.RETRY, reason="INTERNAL", status=500),
            # FCM asks for at least a minute after QUOTA_EXCEEDED, whatever Retry-After says.
            DeliveryResult(Outcome.RETRY, reason="QUOTA_EXCEEDED", status=429, retry_after=60.0),
            DeliveryResult(Outcome.RETRY, reason="QUOTA_EXCEEDED", status=429, retry_after=120.0),
        ]

    async def test_access_token_is_exchanged_once_for_many_sends(
        self,
        fcm_account: dict[str, Any],
        http_client: Http2Client,
        sim: SimulatorHandle,
        sim_control: httpx.Client,
    ) -> None:
        provider = FcmProvider(
            FcmCredentials(fcm_account),
            http_client,
            base_url=sim.base_url,
            outbound=LOCAL_SERVERS_POLICY,
        )
        token = fcm_token()

        # Two sends racing for the first token, then two more: one exchange serves them all.
        await asyncio.gather(
            provider.send(notification(), [Device(token)]),
            provider.send(notification(), [Device(token)]),
        )
        for _ in range(2):
            await provider.send(notification(), [Device(token), Device(token)])

        messages = received(sim_control, "fcm", token)["messages"]
        assert len(messages) == 6
        assert len({m["headers"]["authorization"] for m in messages}) == 1

    async def test_unauthenticated_drops_the_access_token(
        self, fcm: FcmProvider, sim_control: httpx.Client
    ) -> None:
        token = fcm_token()
        await fcm.send(notification(), [Device(token)])
        fail_next(sim_control, "fcm", token, status=401)

        [refused] = await fcm.send(notification(), [Device(token)])
        [delivered] = await fcm.send(notification(), [Device(token)])

        assert refused == DeliveryResult(Outcome.RETRY, reason="UNAUTHENTICATED", status=401)
        assert delivered.outcome is Outcome.DELIVERED
        first, second = (
            m["headers"]["authorization"] for m in received(sim_control, "fcm", token)["messages"]
        )
        assert first != second

    async def test_token_endpoint_refusal_fails_every_device(
        self, fcm_account: dict[str, Any], http_client: Http2Client, sim: SimulatorHandle
    ) -> None:
        forged_key = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        account = {**fcm_account, "private_key": forged_key}
        provider = FcmProvider(
            FcmCredentials(account),
            http_client,
            base_url=sim.base_url,
            outbound=LOCAL_SERVERS_POLICY,
        )

        results = await provider.send(notification(), [Device(fcm_token())] * 3)

        assert results == [DeliveryResult(Outcome.FAILED, reason="invalid_grant", status=400)] * 3

    @pytest.mark.parametrize("field", ["project_id", "private_key", "client_email", "token_uri"])
    def test_incomplete_service_account_is_a_config_error(
        self, fcm_account: dict[str, Any], http_client: Http2Client, field: str
    ) -> None:
        account = {k: v for k, v in fcm_account.items() if k != field}
        with pytest.raises(ProviderConfigError, match=field):
            FcmProvider(
                FcmCredentials(account),
                http_client,
                base_url="https://unused",
                outbound=LOCAL_SERVERS_POLICY,
            )

    async def test_many_devices_in_one_send(
        self, fcm: FcmProvider, sim_control: httpx.Client
    ) -> None:
        tokens = [fcm_token() for _ in range(MANY)]

        results = await fcm.send(notification(), [Device(t) for t in tokens])

        assert [r.outcome for r in results] == [Outcome.DELIVERED] * MANY
        assert stats(sim_control, "fcm")["accepted"] == MANY
        assert (
            last_message(sim_control, "fcm", tokens[-1])["payload"]["message"]["token"]
            == tokens[-1]
        )


# --- Web Push ----------------------------------------------------------------------------------


class TestWebPush:
    async def test_success_payload_is_decrypted_by_the_browser(
        self,
        webpush: WebPushProvider,
        sim_control: httpx.Client,
        vapid_credentials: WebPushCredentials,
    ) -> None:
        device = subscribe(sim_control, vapid_credentials)
        note = notification(
            media=Media(icon=ICON, picture=PICTURE),
            expires_at=datetime.now(UTC) + timedelta(hours=1),
            collapse_key="promo",
            priority=Priority.HIGH,
        )

        assert await webpush.send(note, [device]) == [DeliveryResult(Outcome.DELIVERED, status=201)]

        message = last_message(sim_control, "webpush", subscription_id(device))
        assert message["payload"] == {
            "title": "Hello!",
            "alert": "How's it going?",
            "com.batch": {
                "i": note.send_id,
                "ni": note.send_id,  # the notification's tag: a re-sent copy replaces it
                "od": OPEN_DATA,
                "da": {"a": "batch.deeplink", "args": {"l": DEEPLINK}},
                "icu": ICON,
                "imu": PICTURE,
            },
            **CUSTOM,
        }
        headers = message["headers"]
        assert 3590 <= int(headers["ttl"]) <= 3600
        assert headers["urgency"] == "high"
        assert headers["topic"] == "promo"
        assert headers["content-encoding"] == "aes128gcm"
        assert headers["authorization"].startswith("vapid t=")
        assert headers["authorization"].endswith(f", k={vapid_credentials.vapid_public_key}")

    async def test_defaults_ttl_28_days_and_hashes_an_oversized_topic(
        self,
        webpush: WebPushProvider,
        sim_control: httpx.Client,
        vapid_credentials: WebPushCredentials,
    ) -> None:
        device = subscribe(sim_control, vapid_credentials)
        note = notification(priority=Priority.NORMAL, collapse_key="x" * 33, deeplink=None)

        [result] = await webpush.send(note, [device])

        assert result.outcome is Outcome.DELIVERED
        message = last_message(sim_control, "webpush", subscription_id(device))
        assert message["headers"]["ttl"] == "2419200"
        assert message["headers"]["urgency"] == "normal"
        # 33 characters is no RFC 8030 topic: its hash is (decision 0031).
        assert message["headers"]["topic"] == webpush_topic("x" * 33)
        assert len(message["headers"]["topic"]) == 32
        assert "da" not in message["payload"]["com.batch"]

    async def test_gone_and_unknown_subscriptions_are_token_invalid(
        self,
        webpush: WebPushProvider,
        sim_control: httpx.Client,
        sim: SimulatorHandle,
        vapid_credentials: WebPushCredentials,
    ) -> None:
        gone = subscribe(sim_control, vapid_credentials)
        uninstall(sim_control, "webpush", subscription_id(gone))
        unknown = dataclasses.replace(gone, token=f"{sim.base_url}/wp/never-subscribed")

        results = await webpush.send(notification(), [gone, unknown])

        assert [(r.outcome, r.status) for r in results] == [
            (Outcome.TOKEN_INVALID, 410),
            (Outcome.TOKEN_INVALID, 404),
        ]

    async def test_error_body_is_recorded_verbatim(
        self,
        webpush: WebPushProvider,
        sim_control: httpx.Client,
        vapid_credentials: WebPushCredentials,
    ) -> None:
        device = subscribe(sim_control, vapid_credentials)
        fail_next(
            sim_control, "webpush", subscription_id(device), status=400, reason="Bad subscription"
        )

        [result] = await webpush.send(notification(), [device])

        assert result.outcome is Outcome.FAILED
        assert result.status == 400
        assert result.reason is not None
        assert result.reason.startswith("HTTP 400: {")
        assert json.loads(result.reason.removeprefix("HTTP 400: "))["message"] == "Bad subscription"

    async def test_vapid_key_not_the_subscriptions_is_refused(
        self,
        http_client: Http2Client,
        sim_control: httpx.Client,
        vapid_credentials: WebPushCredentials,
        make_vapid_credentials: Callable[[], WebPushCredentials],
    ) -> None:
        device = subscribe(sim_control, vapid_credentials)
        provider = WebPushProvider(
            make_vapid_credentials(), http_client, outbound=LOCAL_SERVERS_POLICY
        )

        [result] = await provider.send(notification(), [device])

        assert result.outcome is Outcome.FAILED
        assert result.status == 403
        assert result.reason is not None
        assert "applicationServerKey" in result.reason

    async def test_transient_errors_are_retried_with_retry_after(
        self,
        webpush: WebPushProvider,
        sim_control: httpx.Client,
        vapid_credentials: WebPushCredentials,
    ) -> None:
        throttled = subscribe(sim_control, vapid_credentials)
        unavailable = subscribe(sim_control, vapid_credentials)
        fail_next(sim_control, "webpush", subscription_id(throttled), status=429, retry_after=7)
        fail_next(sim_control, "webpush", subscription_id(unavailable), status=503)

        results = await webpush.send(notification(), [throttled, unavailable])

        assert [(r.outcome, r.status, r.retry_after) for r in results] == [
            (Outcome.RETRY, 429, 7.0),
            (Outcome.RETRY, 503, None),
        ]

    async def test_vapid_header_is_signed_once_per_origin(
        self,
        webpush: WebPushProvider,
        sim_control: httpx.Client,
        vapid_credentials: WebPushCredentials,
    ) -> None:
        device = subscribe(sim_control, vapid_credentials)

        for _ in range(3):
            await webpush.send(notification(), [device])

        messages = received(sim_control, "webpush", subscription_id(device))["messages"]
        assert len(messages) == 3
        assert len({m["headers"]["authorization"] for m in messages}) == 1

    async def test_unusable_subscriptions_fail_without_a_request(
        self,
        webpush: WebPushProvider,
        sim_control: httpx.Client,
        vapid_credentials: WebPushCredentials,
    ) -> None:
        device = subscribe(sim_control, vapid_credentials)
        devices = [
            dataclasses.replace(device, p256dh=None),
            dataclasses.replace(device, auth="c2hvcnQ"),
            dataclasses.replace(device, token="http://push.example.com/plain-http"),
            device,
        ]

        results = await webpush.send(notification(), devices)

        assert [r.reason.split(":")[0] if r.reason else None for r in results] == [
            "InvalidSubscriptionKeys",
            "InvalidSubscriptionKeys",
            "InvalidEndpoint",
            None,
        ]
        assert results[-1].outcome is Outcome.DELIVERED
        assert stats(sim_control, "webpush")["requests"] == 1

    def test_mismatched_key_pair_is_a_config_error(
        self,
        http_client: Http2Client,
        vapid_credentials: WebPushCredentials,
        make_vapid_credentials: Callable[[], WebPushCredentials],
    ) -> None:
        mixed = dataclasses.replace(
            vapid_credentials, vapid_public_key=make_vapid_credentials().vapid_public_key
        )
        with pytest.raises(ProviderConfigError):
            WebPushProvider(mixed, http_client, outbound=LOCAL_SERVERS_POLICY)

    async def test_many_devices_in_one_send(
        self,
        webpush: WebPushProvider,
        sim_control: httpx.Client,
        vapid_credentials: WebPushCredentials,
    ) -> None:
        # 40 browsers, 50 pushes each: subscribing 2,000 would mostly test the simulator.
        browsers = [subscribe(sim_control, vapid_credentials) for _ in range(40)]
        devices = browsers * (MANY // len(browsers))

        results = await webpush.send(notification(), devices)

        assert [r.outcome for r in results] == [Outcome.DELIVERED] * MANY
        assert stats(sim_control, "webpush")["accepted"] == MANY
        assert {
            received(sim_control, "webpush", subscription_id(b))["count"] for b in browsers
        } == {50}


# --- the contract every provider keeps ---------------------------------------------------------


class Harness:
    """One provider and how to make a device its simulator knows."""

    def __init__(
        self,
        service: str,
        provider: Provider,
        new_device: Callable[[], Device],
        sim_token: Callable[[Device], str],
    ) -> None:
        self.service = service
        self.provider = provider
        self.new_device = new_device
        self.sim_token = sim_token


@pytest.fixture(params=["apns", "fcm", "webpush"])
def harness(
    request: pytest.FixtureRequest,
    apns: ApnsProvider,
    fcm: FcmProvider,
    webpush: WebPushProvider,
    sim_control: httpx.Client,
    vapid_credentials: WebPushCredentials,
) -> Harness:
    if request.param == "apns":
        return Harness("apns", apns, lambda: Device(apns_token()), lambda d: d.token)
    if request.param == "fcm":
        return Harness("fcm", fcm, lambda: Device(fcm_token()), lambda d: d.token)
    return Harness(
        "webpush", webpush, lambda: subscribe(sim_control, vapid_credentials), subscription_id
    )


class TestProviderContract:
    async def test_success_is_delivered(self, harness: Harness, sim_control: httpx.Client) -> None:
        device = harness.new_device()

        [result] = await harness.provider.send(notification(), [device])

        assert result.outcome is Outcome.DELIVERED
        assert received(sim_control, harness.service, harness.sim_token(device))["count"] == 1

    async def test_dead_token_is_token_invalid(
        self, harness: Harness, sim_control: httpx.Client
    ) -> None:
        device = harness.new_device()
        uninstall(sim_control, harness.service, harness.sim_token(device))

        [result] = await harness.provider.send(notification(), [device])

        assert result.outcome is Outcome.TOKEN_INVALID
        assert result.reason

    async def test_server_error_is_retried(
        self, harness: Harness, sim_control: httpx.Client
    ) -> None:
        device = harness.new_device()
        fail_next(sim_control, harness.service, harness.sim_token(device), status=500)

        [first] = await harness.provider.send(notification(), [device])
        [second] = await harness.provider.send(notification(), [device])

        assert (first.outcome, first.status) == (Outcome.RETRY, 500)
        assert second.outcome is Outcome.DELIVERED

    async def test_results_keep_the_order_of_devices(
        self, harness: Harness, sim_control: httpx.Client
    ) -> None:
        live, dead, failing = (harness.new_device() for _ in range(3))
        uninstall(sim_control, harness.service, harness.sim_token(dead))
        fail_next(sim_control, harness.service, harness.sim_token(failing), status=500)

        results = await harness.provider.send(notification(), [dead, live, failing, live])

        assert [r.outcome for r in results] == [
            Outcome.TOKEN_INVALID,
            Outcome.DELIVERED,
            Outcome.RETRY,
            Outcome.DELIVERED,
        ]

    async def test_no_devices_no_requests(
        self, harness: Harness, sim_control: httpx.Client
    ) -> None:
        assert await harness.provider.send(notification(), []) == []
        assert stats(sim_control, harness.service)["requests"] == 0
