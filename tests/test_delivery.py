"""End to end: Transactional API -> outbox -> worker -> provider -> simulator over TLS/HTTP/2.

Each provider: success, token removed, error recorded verbatim, retry then success, retries
exhausted, not configured; plus the Dev-key rules and a provider that cannot be reached.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import event, select, update

from clarion.db import transaction
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send
from clarion.events.models import PushEvent
from clarion.queue import Lane
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from tests.conftest import ClientApp, new_app
from tests.support.simulator import APNS_ENDPOINTS, SimulatorHandle, apns_endpoint
from tests.support.waiting import eventually


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The iOS tests run against both APNs endpoints (tests/support/simulator.py).
    if "ios_app" in metafunc.fixturenames:
        metafunc.parametrize("apns_kind", APNS_ENDPOINTS)


@pytest.fixture
def apns_kind() -> str:
    return "granian"


@pytest.fixture(autouse=True)
def _apns_endpoint(
    apns_kind: str,
    runtime: Runtime,
    sim: SimulatorHandle,
    sim_control: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Providers are built per app on first use, from these settings: each test's new app
    # talks to the endpoint of its parameter.
    url = apns_endpoint(sim, sim_control, apns_kind)
    monkeypatch.setattr(runtime.settings, "apns_production_url", url)
    monkeypatch.setattr(runtime.settings, "apns_sandbox_url", url)


async def register(
    api: httpx.AsyncClient,
    app: ClientApp,
    install_id: str,
    *,
    key: str | None = None,
    **fields: Any,
) -> None:
    fields.setdefault("push_optin", True)
    response = await api.put(
        f"/sdk/v1/{key or app.api_key}/installations/{install_id}", json=fields
    )
    assert response.status_code == 200, response.text


async def transactional(
    api: httpx.AsyncClient, app: ClientApp, *, key: str | None = None, **body: Any
) -> str:
    body.setdefault("group_id", "tests")
    body.setdefault("message", {"title": "Hello", "body": "World"})
    response = await api.post(
        f"/1.1/{key or app.api_key}/transactional/send", headers=app.headers(), json=body
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def wait_for_send(
    api: httpx.AsyncClient, app: ClientApp, token: str, *, timeout: float = 20.0
) -> dict[str, Any]:
    """Until no batch of the send is pending any more; returns the send's lookup."""
    deadline = time.monotonic() + timeout
    while True:
        response = await api.get(
            f"/1.1/{app.api_key}/transactional/sends/{token}", headers=app.headers()
        )
        state: dict[str, Any] = response.json()
        if state["pending_batches"] == 0:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"send {token} still pending: {state}")
        await asyncio.sleep(0.05)


def received(sim_control: httpx.Client, service: str, token: str) -> dict[str, Any]:
    response = sim_control.get(f"/_sim/{service}/tokens/{token}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def events_of(runtime: Runtime, send_token: str) -> list[PushEvent]:
    async with runtime.sessions() as session:
        rows = await session.scalars(
            select(PushEvent).where(PushEvent.send_token == send_token).order_by(PushEvent.id)
        )
        return list(rows)


def apns_token() -> str:
    return secrets.token_hex(32)


class TestApns:
    async def test_success_reaches_the_device_with_batch_metadata(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        token = apns_token()
        await register(api, ios_app, "ios-1", push_token=token, custom_id="alice")
        send_token = await transactional(
            api,
            ios_app,
            recipients={"custom_ids": ["alice"]},
            deeplink="myapp://inbox",
            custom_payload='{"thread": 7}',
            priority="high",
            time_to_live=600,
        )
        state = await wait_for_send(api, ios_app, send_token)
        assert (state["targeted"], state["sent"], state["failed"]) == (1, 1, 0)

        got = received(sim_control, "apns", token)
        assert got["count"] == 1
        message = got["messages"][-1]
        payload = message["payload"]
        assert payload["aps"]["alert"] == {"title": "Hello", "body": "World"}
        assert payload["com.batch"]["i"] == send_token
        assert payload["com.batch"]["l"] == "myapp://inbox"
        assert payload["thread"] == 7  # custom payload keys at the top level
        headers = {k.lower(): v for k, v in message["headers"].items()}
        assert headers["apns-priority"] == "10"
        assert headers["apns-topic"] == "com.example.tests"
        assert int(headers["apns-expiration"]) > time.time()

        events = await events_of(runtime, send_token)
        assert [(e.kind, e.install_id, e.custom_id, e.group_id) for e in events] == [
            ("push_sent", "ios-1", "alice", "tests")
        ]

    async def test_advertising_ids_reach_the_installations_that_reported_them(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        idfa, other_idfa = (
            "AEBE52E7-03EE-455A-B3C4-E57283966239",
            "6D92078A-8246-4BA4-AE5B-76104861E7DC",
        )
        phone, tablet, other = apns_token(), apns_token(), apns_token()
        # One person's two devices may report the same advertising id (IDFA per vendor).
        await register(api, ios_app, "ios-ad-1", push_token=phone, advertising_id=idfa)
        await register(api, ios_app, "ios-ad-2", push_token=tablet, advertising_id=idfa)
        await register(api, ios_app, "ios-ad-3", push_token=other, advertising_id=other_idfa)
        send_token = await transactional(
            api, ios_app, recipients={"advertising_ids": [idfa, "unknown-idfa"]}
        )
        state = await wait_for_send(api, ios_app, send_token)
        assert (state["targeted"], state["sent"], state["failed"]) == (2, 2, 0)

        for token in (phone, tablet):
            got = received(sim_control, "apns", token)
            assert got["count"] == 1
            assert got["messages"][-1]["payload"]["com.batch"]["i"] == send_token
        assert received(sim_control, "apns", other)["count"] == 0
        events = await events_of(runtime, send_token)
        assert sorted((e.kind, e.install_id, e.advertising_id) for e in events) == [
            ("push_sent", "ios-ad-1", idfa),
            ("push_sent", "ios-ad-2", idfa),
        ]

    async def test_dead_token_is_removed_and_logged(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        token = apns_token()
        await register(api, ios_app, "ios-dead", push_token=token, custom_id="bob")
        sim_control.post(f"/_sim/apns/tokens/{token}/uninstall")
        send_token = await transactional(api, ios_app, recipients={"custom_ids": ["bob"]})
        state = await wait_for_send(api, ios_app, send_token)
        assert state["tokens_deleted"] == 1
        events = await events_of(runtime, send_token)
        assert [(e.kind, e.reason) for e in events] == [("token_deleted", "Unregistered")]
        async with runtime.sessions() as session:
            inst = await session.scalar(
                select(Installation).where(
                    Installation.install_id == "ios-dead", Installation.app_id == ios_app.app_id
                )
            )
        assert inst is not None
        assert inst.push_token is None

    async def test_malformed_token_is_removed(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        send_token = await transactional(api, ios_app, recipients={"tokens": ["not-hex-at-all"]})
        await wait_for_send(api, ios_app, send_token)
        events = await events_of(runtime, send_token)
        assert [(e.kind, e.reason, e.push_token) for e in events] == [
            ("token_deleted", "BadDeviceToken", "not-hex-at-all")
        ]

    async def test_provider_error_is_recorded_verbatim(
        self, api: httpx.AsyncClient, runtime: Runtime, sim_control: httpx.Client
    ) -> None:
        app = await new_app(runtime, sim_control, "ios", topics=["com.someone.else"])
        await register(api, app, "ios-topic", push_token=apns_token(), custom_id="carol")
        send_token = await transactional(api, app, recipients={"custom_ids": ["carol"]})
        state = await wait_for_send(api, app, send_token)
        assert state["failed"] == 1
        assert [(e["kind"], e["reason"]) for e in state["last_errors"]] == [
            ("push_error", "TopicDisallowed")
        ]

    async def test_transient_error_is_retried_then_delivered(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        token = apns_token()
        await register(api, ios_app, "ios-flaky", push_token=token, custom_id="dave")
        sim_control.post(f"/_sim/apns/tokens/{token}/fail", json={"status": 503, "count": 1})
        send_token = await transactional(api, ios_app, recipients={"custom_ids": ["dave"]})
        state = await wait_for_send(api, ios_app, send_token)
        assert (state["sent"], state["failed"]) == (1, 0)
        assert received(sim_control, "apns", token)["count"] == 1  # accepted once
        async with runtime.sessions() as session:
            send = await session.scalar(select(Send).where(Send.token == send_token))
            assert send is not None
            batches = (
                await session.scalars(
                    select(DeliveryBatch)
                    .where(DeliveryBatch.send_id == send.id)
                    .order_by(DeliveryBatch.id)
                )
            ).all()
        assert [b.attempt for b in batches] == [0, 1]
        assert batches[1].last_reason == "ServiceUnavailable"
        assert all(b.status == BatchStatus.DONE.value for b in batches)

    async def test_retries_exhausted_becomes_push_error(
        self, api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        token = apns_token()
        await register(api, ios_app, "ios-down", push_token=token, custom_id="erin")
        sim_control.post(f"/_sim/apns/tokens/{token}/fail", json={"status": 500, "count": 50})
        send_token = await transactional(api, ios_app, recipients={"custom_ids": ["erin"]})
        state = await wait_for_send(api, ios_app, send_token)
        assert (state["sent"], state["failed"]) == (0, 1)
        assert state["last_errors"][0]["reason"] == "InternalServerError"

    async def test_app_without_credentials(self, api: httpx.AsyncClient, runtime: Runtime) -> None:
        app = await new_app(runtime, None, "ios", configure=False)
        await register(api, app, "ios-unconfigured", push_token=apns_token(), custom_id="fay")
        send_token = await transactional(api, app, recipients={"custom_ids": ["fay"]})
        state = await wait_for_send(api, app, send_token)
        assert state["failed"] == 1
        assert state["last_errors"][0]["reason"].startswith("NotConfigured")

    async def test_dev_key_reaches_only_debug_builds_and_live_only_release_builds(
        self, api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        live_token, dev_token = apns_token(), apns_token()
        await register(api, ios_app, "release", push_token=live_token, custom_id="gus")
        await register(
            api, ios_app, "debug", key=ios_app.dev_api_key, push_token=dev_token, custom_id="gus"
        )
        live = await transactional(api, ios_app, recipients={"custom_ids": ["gus"]})
        dev = await transactional(
            api, ios_app, key=ios_app.dev_api_key, recipients={"custom_ids": ["gus"]}
        )
        await wait_for_send(api, ios_app, live)
        await wait_for_send(api, ios_app, dev)
        assert received(sim_control, "apns", live_token)["count"] == 1
        assert received(sim_control, "apns", dev_token)["count"] == 1
        live_payload = received(sim_control, "apns", live_token)["messages"][-1]["payload"]
        dev_payload = received(sim_control, "apns", dev_token)["messages"][-1]["payload"]
        assert live_payload["com.batch"]["i"] == live
        assert dev_payload["com.batch"]["i"] == dev

    async def test_opted_out_users_are_skipped(
        self, api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        token = apns_token()
        await register(api, ios_app, "quiet", push_token=token, custom_id="hal", push_optin=False)
        send_token = await transactional(api, ios_app, recipients={"custom_ids": ["hal"]})
        state = await wait_for_send(api, ios_app, send_token)
        assert state["targeted"] == 0
        assert received(sim_control, "apns", token)["count"] == 0

    async def test_languages_pick_their_message(
        self, api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        tokens = {lang: apns_token() for lang in ("fr", "en", "de")}
        for lang, token in tokens.items():
            await register(
                api, ios_app, f"lang-{lang}", push_token=token, custom_id="ivy", language=lang
            )
        send_token = await transactional(
            api,
            ios_app,
            message=None,
            messages={"fr": {"body": "Bonjour"}, "default": {"body": "Hello"}},
            recipients={"custom_ids": ["ivy"]},
        )
        await wait_for_send(api, ios_app, send_token)
        bodies = {
            lang: received(sim_control, "apns", t)["messages"][-1]["payload"]["aps"]["alert"][
                "body"
            ]
            for lang, t in tokens.items()
        }
        assert bodies == {"fr": "Bonjour", "en": "Hello", "de": "Hello"}


class TestFcm:
    async def test_success_is_a_batch_data_message(
        self,
        api: httpx.AsyncClient,
        android_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        token = "fcm-" + secrets.token_urlsafe(40)
        await register(api, android_app, "droid-1", push_token=token, custom_id="jo")
        send_token = await transactional(
            api,
            android_app,
            recipients={"custom_ids": ["jo"]},
            deeplink="myapp://x",
            custom_payload='{"n": 1}',
            gcm_collapse_key={"enabled": True, "key": "news"},
            time_to_live=120,
        )
        state = await wait_for_send(api, android_app, send_token)
        assert state["sent"] == 1, state["last_errors"]
        message = received(sim_control, "fcm", token)["messages"][-1]["payload"]["message"]
        assert message["token"] == token
        data = message["data"]
        assert (data["title"], data["msg"], data["n"]) == ("Hello", "World", "1")
        batch = orjson.loads(data["com.batch"])
        assert (batch["i"], batch["l"]) == (send_token, "myapp://x")
        assert message["android"]["collapse_key"] == "news"
        assert message["android"]["ttl"].endswith("s")

    async def test_unregistered_token_is_removed(
        self,
        api: httpx.AsyncClient,
        android_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        token = "fcm-" + secrets.token_urlsafe(40)
        await register(api, android_app, "droid-dead", push_token=token, custom_id="kim")
        sim_control.post(f"/_sim/fcm/tokens/{token}/uninstall")
        send_token = await transactional(api, android_app, recipients={"custom_ids": ["kim"]})
        state = await wait_for_send(api, android_app, send_token)
        assert state["tokens_deleted"] == 1
        assert [(e.kind, e.reason) for e in await events_of(runtime, send_token)] == [
            ("token_deleted", "UNREGISTERED")
        ]

    async def test_quota_exceeded_waits_at_least_a_minute(
        self,
        api: httpx.AsyncClient,
        android_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        token = "fcm-" + secrets.token_urlsafe(40)
        await register(api, android_app, "droid-quota", push_token=token, custom_id="lee")
        sim_control.post(
            f"/_sim/fcm/tokens/{token}/fail", json={"status": 429, "count": 1, "retry_after": 1}
        )
        send_token = await transactional(api, android_app, recipients={"custom_ids": ["lee"]})
        deadline = time.monotonic() + 20
        async with runtime.sessions() as session:
            send = await session.scalar(select(Send).where(Send.token == send_token))
            assert send is not None
        while True:
            async with runtime.sessions() as session:
                retry = await session.scalar(
                    select(DeliveryBatch).where(
                        DeliveryBatch.send_id == send.id, DeliveryBatch.attempt == 1
                    )
                )
            if retry is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert retry is not None
        assert retry.last_reason == "QUOTA_EXCEEDED"
        assert (retry.not_before - retry.created_at).total_seconds() >= 59


async def subscribe_browser(
    api: httpx.AsyncClient, web_app: ClientApp, sim_control: httpx.Client
) -> dict[str, Any]:
    """A simulated browser subscribes with the app's VAPID key, as pushManager.subscribe does."""
    vapid = (await api.get(f"/sdk/v1/{web_app.api_key}/webpush/vapid-key")).json()
    subscription: dict[str, Any] = sim_control.post(
        "/_sim/webpush/subscriptions",
        json={"application_server_key": vapid["application_server_key"]},
    ).json()
    return subscription


class TestWebPush:
    async def test_encrypted_payload_reaches_the_browser(
        self,
        api: httpx.AsyncClient,
        web_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        sub = await subscribe_browser(api, web_app, sim_control)
        await register(api, web_app, "browser", webpush_subscription=sub, custom_id="max")
        send_token = await transactional(
            api, web_app, recipients={"custom_ids": ["max"]}, deeplink="https://shop.example/x"
        )
        state = await wait_for_send(api, web_app, send_token)
        assert state["sent"] == 1, state
        sub_id = sub["endpoint"].rsplit("/", 1)[1]
        payload = received(sim_control, "webpush", sub_id)["messages"][-1]["payload"]
        assert (payload["title"], payload["alert"]) == ("Hello", "World")
        assert payload["com.batch"]["i"] == send_token

    async def test_gone_subscription_is_removed(
        self,
        api: httpx.AsyncClient,
        web_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        sub = await subscribe_browser(api, web_app, sim_control)
        await register(api, web_app, "gone", webpush_subscription=sub, custom_id="ned")
        sim_control.post(f"/_sim/webpush/tokens/{sub['endpoint'].rsplit('/', 1)[1]}/uninstall")
        send_token = await transactional(api, web_app, recipients={"custom_ids": ["ned"]})
        state = await wait_for_send(api, web_app, send_token)
        assert state["tokens_deleted"] == 1


class TestSharedJobs:
    async def test_concurrent_small_sends_are_each_delivered_and_counted_once(
        self, api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        # Sends committed together are packed into shared jobs: each keeps its own counters,
        # events and payload.
        tokens = {f"user-{n}": apns_token() for n in range(24)}
        for user, token in tokens.items():
            await register(api, ios_app, f"install-{user}", push_token=token, custom_id=user)
        users = list(tokens)
        send_tokens = await asyncio.gather(
            *(
                transactional(
                    api,
                    ios_app,
                    recipients={"custom_ids": [user]},
                    message={"title": "Hi", "body": user},
                )
                for user in users
            )
        )

        for user, send_token in zip(users, send_tokens, strict=True):
            state = await wait_for_send(api, ios_app, send_token)
            assert (state["targeted"], state["sent"], state["failed"]) == (1, 1, 0)
            got = received(sim_control, "apns", tokens[user])
            assert got["count"] == 1
            payload = got["messages"][-1]["payload"]
            assert (payload["aps"]["alert"]["body"], payload["com.batch"]["i"]) == (
                user,
                send_token,
            )

    async def test_jobs_started_together_share_one_claim_and_the_lanes_pass_apart(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        sim_control: httpx.Client,
    ) -> None:
        """pgqueuer starts up to half a worker's slots at once: the jobs of a lane started in
        the same turn are claimed and loaded in one pass (a job's five queries cost most of a
        small job's CPU), and a campaign's job passes apart from transactional ones."""
        deliverer = runtime.deliverer
        assert deliverer is not None
        tokens = {f"together-{n}": apns_token() for n in range(3)}
        for user, token in tokens.items():
            await register(api, ios_app, f"install-{user}", push_token=token, custom_id=user)
        batch_ids: list[int] = []
        async with transaction(runtime.sessions) as session:  # written, not enqueued
            for user in tokens:
                send = Send(
                    token=secrets.token_hex(16),
                    app_id=ios_app.app_id,
                    kind="transactional",
                    content={"message": {"title": "Hi", "body": user}},
                )
                session.add(send)
                await session.flush()
                batch = DeliveryBatch(send_id=send.id, recipients={"custom_ids": [user]})
                session.add(batch)
                await session.flush()
                batch_ids.append(batch.id)
        claims: list[list[int]] = []

        def claim_seen(
            conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
        ) -> None:
            if statement.lstrip().startswith("UPDATE delivery_batches") and "not_before <=" in (
                statement
            ):
                values = parameters.values() if isinstance(parameters, dict) else parameters
                ours = sorted(v for v in values if type(v) is int and v in batch_ids)
                if ours:
                    claims.append(ours)

        engine = runtime.engine.sync_engine
        event.listen(engine, "before_cursor_execute", claim_seen)
        try:
            first, second, campaign = batch_ids
            await asyncio.gather(
                deliverer.deliver_batches([first], Lane.PROMPT),
                deliverer.deliver_batches([second], Lane.PROMPT),
                deliverer.deliver_batches([campaign], Lane.BULK),
            )
        finally:
            event.remove(engine, "before_cursor_execute", claim_seen)

        assert sorted(claims) == [[first, second], [campaign]]
        for token in tokens.values():
            assert received(sim_control, "apns", token)["count"] == 1


class TestUnexpectedFailure:
    async def test_a_batch_that_breaks_the_worker_is_released_then_given_up(
        self, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        # Not a provider outcome but a bug or bad data: here a batch whose recipients cannot be
        # read. It must not stay leased, and must not be retried for ever.
        deliverer = runtime.deliverer
        assert deliverer is not None
        last = runtime.settings.retry_max_attempts - 1
        async with transaction(runtime.sessions) as session:
            send = Send(
                token=secrets.token_hex(16), app_id=ios_app.app_id, kind="transactional", content={}
            )
            session.add(send)
            await session.flush()
            batch = DeliveryBatch(send_id=send.id, recipients={"custom_ids": 7}, attempt=last - 1)
            session.add(batch)

        async def attempt() -> DeliveryBatch:
            with pytest.raises(TypeError):
                await deliverer.deliver_batches([batch.id])
            async with runtime.sessions() as session:
                found = await session.get(DeliveryBatch, batch.id)
                assert found is not None
                return found

        released = await attempt()
        assert (released.status, released.attempt) == (BatchStatus.PENDING.value, last)
        assert released.lease_until is None
        assert "TypeError" in (released.last_reason or "")

        async with transaction(runtime.sessions) as session:  # due again now
            await session.execute(
                update(DeliveryBatch)
                .where(DeliveryBatch.id == batch.id)
                .values(not_before=released.created_at)
            )
        given_up = await attempt()
        assert (given_up.status, given_up.attempt) == (BatchStatus.DONE.value, last + 1)
        assert given_up.finished_at is not None


class TestProviderDown:
    async def test_unreachable_provider_neither_blocks_the_api_nor_loses_the_send(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        token = apns_token()
        await register(api, ios_app, "ios-outage", push_token=token, custom_id="oz")
        sim_control.put("/_sim/apns/faults", json={"rates": {"503": 1.0}})
        try:
            refused = sim_control.get("/_sim/stats").json()["apns"]["rejected"]
            started = time.monotonic()
            send_token = await transactional(api, ios_app, recipients={"custom_ids": ["oz"]})
            assert time.monotonic() - started < 1.0  # the API did not wait for the provider

            async def refused_once() -> bool:  # the first attempt fails during the outage
                return bool(sim_control.get("/_sim/stats").json()["apns"]["rejected"] > refused)

            await eventually(refused_once, what="an attempt refused during the outage")
        finally:
            sim_control.put("/_sim/apns/faults", json={"rates": {}})
        state = await wait_for_send(api, ios_app, send_token)
        assert (state["sent"], state["failed"]) == (1, 0)
        assert received(sim_control, "apns", token)["count"] == 1
