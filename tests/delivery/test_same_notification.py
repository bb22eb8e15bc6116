"""A retry of a notification is the same notification (docs/delivery.md, "Duplicates on the
device", decision 0031): APNs gets the same `apns-id` and collapse id on every attempt, Web Push
the same `Topic` and notification tag, FCM the caller's collapse key; a caller's key wins. And
which failures leave a push's outcome unknown (a retry that may reach the device twice).

End to end through the API, the outbox, a worker and the simulators (both backends, and for
APNs both endpoints as in tests/test_delivery.py), where a forced 503 or 429 makes the first
attempt fail; the simulator keeps the refused attempt's
headers (`refused`) beside the accepted one's.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any

import httpx
import pytest

from clarion.delivery.providers import ApnsProvider, FcmProvider, WebPushProvider
from clarion.delivery.providers import apns as apns_provider
from clarion.delivery.providers import fcm as fcm_provider
from clarion.delivery.providers import webpush as webpush_provider
from clarion.delivery.providers.base import (
    ApnsCredentials,
    DeliveryResult,
    Device,
    Notification,
    Outcome,
    WebPushCredentials,
    transport_failure,
)
from clarion.http2 import Http2Client, HttpResponse, TransportError
from tests.conftest import ClientApp
from tests.delivery.test_providers import fcm_token, subscribe, subscription_id
from tests.support.simulator import SimulatorHandle, apns_endpoint, free_port
from tests.test_delivery import (  # noqa: F401 (the APNs endpoints' hook and fixtures)
    _apns_endpoint,
    apns_kind,
    apns_token,
    pytest_generate_tests,
    register,
    subscribe_browser,
    transactional,
    wait_for_send,
)

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
RFC8030_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")  # §5.4: ≤ 32 URL-safe base64 characters


def attempts(sim_control: httpx.Client, service: str, token: str) -> list[dict[str, Any]]:
    """Every attempt the simulator saw for a token, refused ones first (headers lower-cased)."""
    response = sim_control.get(f"/_sim/{service}/tokens/{token}")
    response.raise_for_status()
    log = response.json()
    return [
        {**attempt, "headers": {k.lower(): v for k, v in attempt["headers"].items()}}
        for attempt in [*log["refused"], *log["messages"]]
    ]


KEYED = {"gcm_collapse_key": {"enabled": True, "key": "scores"}}


async def retried_send(
    api: httpx.AsyncClient,
    app: ClientApp,
    sim_control: httpx.Client,
    *,
    service: str,
    token: str,
    registration: dict[str, Any],
    status: int = 503,
    **body: Any,
) -> tuple[str, list[dict[str, Any]]]:
    """A send to one device whose first attempt the simulator answers with `status`: its token
    and every attempt the simulator saw, the refused one first."""
    user = "user-" + secrets.token_hex(4)
    await register(api, app, f"install-{user}", custom_id=user, **registration)
    response = sim_control.post(
        f"/_sim/{service}/tokens/{token}/fail", json={"status": status, "count": 1}
    )
    response.raise_for_status()
    send_token = await transactional(api, app, recipients={"custom_ids": [user]}, **body)
    state = await wait_for_send(api, app, send_token)
    assert (state["sent"], state["failed"]) == (1, 0), state
    return send_token, attempts(sim_control, service, token)


async def retried_to_token(
    api: httpx.AsyncClient,
    app: ClientApp,
    sim_control: httpx.Client,
    service: str,
    token: str,
    **body: Any,
) -> tuple[str, list[dict[str, Any]]]:
    """retried_send to an APNs or FCM token."""
    registration = {"push_token": token}
    return await retried_send(
        api, app, sim_control, service=service, token=token, registration=registration, **body
    )


async def retried_web_push(
    api: httpx.AsyncClient, web_app: ClientApp, sim_control: httpx.Client, **body: Any
) -> tuple[str, list[dict[str, Any]]]:
    subscription = await subscribe_browser(api, web_app, sim_control)
    return await retried_send(
        api,
        web_app,
        sim_control,
        service="webpush",
        token=subscription["endpoint"].rsplit("/", 1)[1],
        registration={"webpush_subscription": subscription},
        **body,
    )


class TestApns:
    # 429 without Retry-After: the test's backoff (50 ms), not a minute's wait.
    @pytest.mark.parametrize("status", [503, 429])
    async def test_a_retry_keeps_the_apns_id_and_the_collapse_id(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        status: int,
    ) -> None:
        token = apns_token()
        send_token, (first, retry) = await retried_to_token(
            api, ios_app, sim_control, "apns", token, status=status
        )

        expected_id = str(uuid.uuid5(apns_provider.APNS_ID_NAMESPACE, f"{send_token}/{token}"))
        assert first["headers"]["apns-id"] == retry["headers"]["apns-id"] == expected_id
        assert CANONICAL_UUID.fullmatch(expected_id)
        # No collapse key given: the send's token, which no other send has.
        assert first["headers"]["apns-collapse-id"] == send_token
        assert retry["headers"]["apns-collapse-id"] == send_token

    async def test_the_callers_collapse_key_wins_on_every_attempt(
        self, api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        token = apns_token()
        _, seen = await retried_to_token(api, ios_app, sim_control, "apns", token, **KEYED)
        assert [a["headers"]["apns-collapse-id"] for a in seen] == ["scores", "scores"]

    async def test_two_sends_to_one_device_never_share_an_id(
        self, api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        token = apns_token()
        await register(api, ios_app, "ios-twice", push_token=token, custom_id="tom")
        sends = [
            await transactional(api, ios_app, recipients={"custom_ids": ["tom"]}) for _ in range(2)
        ]
        for send_token in sends:
            await wait_for_send(api, ios_app, send_token)

        received = attempts(sim_control, "apns", token)
        assert len(received) == 2
        assert len({a["headers"]["apns-id"] for a in received}) == 2
        assert sorted(a["headers"]["apns-collapse-id"] for a in received) == sorted(sends)


class TestFcm:
    async def test_a_retry_keeps_the_callers_collapse_key(
        self, api: httpx.AsyncClient, android_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        token = fcm_token()
        _, seen = await retried_to_token(api, android_app, sim_control, "fcm", token, **KEYED)
        keys = [a["payload"]["message"]["android"]["collapse_key"] for a in seen]
        assert keys == ["scores", "scores"]

    async def test_no_default_collapse_key(
        self, fcm: FcmProvider, sim_control: httpx.Client
    ) -> None:
        # Decision 0031: FCM keeps at most 4 collapse keys for an offline device, so a key
        # per send would lose sends; without the caller's key a message stays non-collapsible.
        token = fcm_token()
        note = Notification(send_id=str(uuid.uuid4()), title="t", body="b")
        assert [r.outcome for r in await fcm.send(note, [Device(token)])] == [Outcome.DELIVERED]
        (accepted,) = attempts(sim_control, "fcm", token)
        assert "collapse_key" not in accepted["payload"]["message"]["android"]


class TestWebPush:
    async def test_a_retry_keeps_the_topic_and_the_tag(
        self, api: httpx.AsyncClient, web_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        send_token, (first, retry) = await retried_web_push(api, web_app, sim_control)

        topic = first["headers"]["topic"]
        assert retry["headers"]["topic"] == topic == webpush_provider.topic(send_token)
        assert RFC8030_TOPIC.fullmatch(topic)
        # The browser shows a notification tagged like one it shows in its place, silently.
        assert retry["payload"]["com.batch"]["ni"] == send_token

    async def test_the_callers_collapse_key_is_the_topic(
        self, api: httpx.AsyncClient, web_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        _, seen = await retried_web_push(api, web_app, sim_control, **KEYED)
        assert [a["headers"]["topic"] for a in seen] == ["scores", "scores"]

    async def test_a_key_that_is_no_topic_is_hashed_into_one(
        self,
        webpush: WebPushProvider,
        vapid_credentials: WebPushCredentials,
        sim_control: httpx.Client,
    ) -> None:
        device = subscribe(sim_control, vapid_credentials)
        key = "Breaking news: " + "x" * 49  # 64 characters, spaces and a colon
        note = Notification(send_id=str(uuid.uuid4()), title="t", body="b", collapse_key=key)
        assert [r.outcome for r in await webpush.send(note, [device])] == [Outcome.DELIVERED]

        (accepted,) = attempts(sim_control, "webpush", subscription_id(device))
        topic = accepted["headers"]["topic"]
        assert RFC8030_TOPIC.fullmatch(topic)
        assert len(topic) == 32
        assert topic == webpush_provider.topic(key) != webpush_provider.topic(key + "!")


class TestUnknownOutcome:
    """A push that left on a stream and got no answer may have been accepted: its retry is
    marked as a possible re-send. One that never left, or got any answer, is not."""

    async def test_a_connection_dropped_mid_stream_leaves_the_outcome_unknown(
        self,
        apns_credentials: ApnsCredentials,
        http_client: Http2Client,
        sim: SimulatorHandle,
        sim_control: httpx.Client,
    ) -> None:
        # The simulators' h2 listener records the push as delivered, then drops the connection
        # instead of answering: the device got it, Clarion cannot know.
        url = apns_endpoint(sim, sim_control, "one-stream")
        provider = ApnsProvider(apns_credentials, http_client, production_url=url, sandbox_url=url)
        token = apns_token()
        note = Notification(send_id=str(uuid.uuid4()), title="t", body="b")
        sim_control.put("/_sim/connections", json={"drop_rate": 1.0}).raise_for_status()
        [lost] = await provider.send(note, [Device(token)])
        sim_control.put("/_sim/connections", json={"drop_rate": 0.0}).raise_for_status()
        [resent] = await provider.send(note, [Device(token)])

        assert (lost.outcome, lost.unknown_outcome) == (Outcome.RETRY, True)
        assert resent.outcome is Outcome.DELIVERED
        # Every copy reached the device as one notification. (More than 2 when the dropped
        # connection was one libcurl had used before: it then retries the request once on a
        # fresh connection by itself.)
        seen = attempts(sim_control, "apns", token)
        assert len(seen) >= 2
        for header in ("apns-id", "apns-collapse-id"):
            assert len({a["headers"][header] for a in seen}) == 1

    async def test_a_push_that_never_left_has_a_known_outcome(
        self, apns_credentials: ApnsCredentials, http_client: Http2Client
    ) -> None:
        url = f"https://127.0.0.1:{free_port()}"  # nothing listens: the connection fails
        provider = ApnsProvider(apns_credentials, http_client, production_url=url, sandbox_url=url)
        note = Notification(send_id=str(uuid.uuid4()), title="t", body="b")
        [result] = await provider.send(note, [Device(apns_token())])
        assert (result.outcome, result.unknown_outcome) == (Outcome.RETRY, False)

    @pytest.mark.parametrize("provider", [apns_provider, fcm_provider, webpush_provider])
    @pytest.mark.parametrize("written", [True, False])
    def test_a_transport_error_is_unknown_only_once_written(
        self, provider: Any, written: bool
    ) -> None:
        error = TransportError("timeout", curl_code=28, written=written)
        result: DeliveryResult = provider._map(error)
        assert (result.outcome, result.unknown_outcome) == (Outcome.RETRY, written)
        assert result == transport_failure(error)

    @pytest.mark.parametrize("provider", [apns_provider, fcm_provider, webpush_provider])
    @pytest.mark.parametrize("status", [429, 500, 503])
    def test_an_answer_that_refuses_is_a_known_outcome(self, provider: Any, status: int) -> None:
        result: DeliveryResult = provider._map(HttpResponse(status, {}, b""))
        assert (result.outcome, result.unknown_outcome) == (Outcome.RETRY, False)

    def test_a_web_push_refused_by_the_outbound_policy_is_final(self) -> None:
        error = TransportError("refused", refused=True)
        result = webpush_provider._map(error)
        assert (result.outcome, result.unknown_outcome) == (Outcome.FAILED, False)


class TestApnsIds:
    def test_the_id_is_the_canonical_uuid5_of_the_send_and_the_device(self) -> None:
        send_id = str(uuid.uuid4())
        ids = apns_provider.ApnsIds(send_id)
        # 300 tokens: every value of the digit that carries the variant bits, most likely.
        for token in [*(apns_token() for _ in range(300)), "not-hex", "é"]:
            expected = str(uuid.uuid5(apns_provider.APNS_ID_NAMESPACE, f"{send_id}/{token}"))
            assert ids.of(token) == expected
            assert CANONICAL_UUID.fullmatch(expected)
        # A worker that re-sends after a crash builds its own ApnsIds: the same ids.
        token = apns_token()
        assert apns_provider.ApnsIds(send_id).of(token) == ids.of(token)
        assert apns_provider.ApnsIds(str(uuid.uuid4())).of(token) != ids.of(token)
