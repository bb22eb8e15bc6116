"""The outbound policy on the delivery path: Web Push endpoints (browsers choose them) and an FCM
service account's token_uri (the tenant's JSON) are checked on the address libcurl connects to,
once per connection; the operator's provider URLs are not checked."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from clarion.delivery.providers import FcmProvider, WebPushProvider
from clarion.delivery.providers.base import (
    Device,
    FcmCredentials,
    Outcome,
    WebPushCredentials,
)
from clarion.http2 import Http2Client, HttpRequest
from clarion.outbound import OutboundPolicy, parse_allowed
from tests.delivery.test_providers import (
    fcm_token,
    notification,
    received,
    subscribe,
    subscription_id,
)
from tests.support.simulator import SimulatorHandle


@pytest.fixture
async def own_client(sim: SimulatorHandle) -> AsyncIterator[Http2Client]:
    """A client of each test's own: libcurl reuses a connection by host and port, and a shared
    one may hold a connection to localhost that another test's policy allowed."""
    client = Http2Client(ca_file=str(sim.ca_file))
    try:
        yield client
    finally:
        await client.aclose()


LOOPBACK = "is a loopback address; an operator can allow it with CLARION_OUTBOUND_ALLOW"


def by_name(device: Device) -> Device:
    """The same subscription, its endpoint's host written as a name that resolves to it."""
    return dataclasses.replace(device, token=device.token.replace("127.0.0.1", "localhost"))


async def test_a_web_push_endpoint_on_loopback_is_not_posted_to(
    own_client: Http2Client, sim_control: httpx.Client, vapid_credentials: WebPushCredentials
) -> None:
    device = subscribe(sim_control, vapid_credentials)
    strict = WebPushProvider(vapid_credentials, own_client, outbound=OutboundPolicy())

    literal, name = await strict.send(notification(), [device, by_name(device)])

    assert literal.outcome is Outcome.FAILED
    assert f"OutboundPolicy: 127.0.0.1 {LOOPBACK}" in str(literal.reason)
    # Refused where libcurl opens the socket: the name resolved to a refused address.
    assert name.outcome is Outcome.FAILED
    assert "refused by the outbound policy: localhost (" in str(name.reason)
    assert LOOPBACK in str(name.reason)
    assert received(sim_control, "webpush", subscription_id(device))["count"] == 0


async def test_a_web_push_host_the_operator_allows_by_name_is_delivered(
    own_client: Http2Client, sim_control: httpx.Client, vapid_credentials: WebPushCredentials
) -> None:
    device = subscribe(sim_control, vapid_credentials)
    allowing = WebPushProvider(
        vapid_credentials,
        own_client,
        outbound=OutboundPolicy(*parse_allowed(["localhost"])),
    )

    [result] = await allowing.send(notification(), [by_name(device)])

    assert result.outcome is Outcome.DELIVERED, result.reason
    assert received(sim_control, "webpush", subscription_id(device))["count"] == 1


async def test_an_fcm_token_uri_on_loopback_is_not_called(
    own_client: Http2Client, fcm_account: dict[str, Any], sim: SimulatorHandle
) -> None:
    named = {**fcm_account, "token_uri": fcm_account["token_uri"].replace("127.0.0.1", "localhost")}
    results = []
    for account in (fcm_account, named):
        provider = FcmProvider(
            FcmCredentials(account), own_client, base_url=sim.base_url, outbound=OutboundPolicy()
        )
        results.extend(await provider.send(notification(), [Device(fcm_token())]))

    literal, name = results
    assert literal.outcome is Outcome.FAILED
    assert f"OutboundPolicy: token_uri 127.0.0.1 {LOOPBACK}" in str(literal.reason)
    assert name.outcome is Outcome.FAILED
    assert "refused by the outbound policy: localhost (" in str(name.reason)


class CountingCheck:
    """An address check (http2.AddressCheck) that allows everything and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def refusal(self, address: str) -> str | None:
        self.calls += 1
        return None


async def test_the_check_costs_once_per_connection_not_per_request(
    sim: SimulatorHandle, sim_control: httpx.Client, vapid_credentials: WebPushCredentials
) -> None:
    # The Web Push path carries ~20k notifications/s: the check is libcurl's open-socket
    # callback, so its cost is per connection (at most 2 per origin here), never per request.
    check = CountingCheck()
    client = Http2Client(ca_file=str(sim.ca_file), max_connections_per_host=2)
    try:
        requests = [
            HttpRequest("GET", f"{sim.base_url}/_sim/webpush/tokens/none", (), b"", check)
            for _ in range(500)
        ]
        responses = await client.request_many(requests)
    finally:
        await client.aclose()

    assert all(getattr(response, "status", None) is not None for response in responses)
    assert 1 <= check.calls <= 2
