"""Fixtures for the push providers: the session's simulator (started by the root conftest) over
real TLS and HTTP/2, one shared client, and credentials the simulator issued."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.delivery.providers import ApnsProvider, FcmProvider, WebPushProvider
from clarion.delivery.providers.base import ApnsCredentials, FcmCredentials, WebPushCredentials
from clarion.http2 import Http2Client
from tests.support.simulator import (
    APNS_ENDPOINTS,
    LOCAL_SERVERS_POLICY,
    SimulatorHandle,
    apns_endpoint,
)

APNS_TOPIC = "com.example.providers"


@pytest.fixture(autouse=True)
def _reset_simulator(sim_control: httpx.Client) -> Iterator[None]:
    """Faults, dead tokens and received messages must not leak from one test into the next."""
    sim_control.post("/_sim/reset").raise_for_status()
    yield
    sim_control.post("/_sim/reset").raise_for_status()


@pytest.fixture(scope="session")
async def http_client(sim: SimulatorHandle) -> AsyncIterator[Http2Client]:
    """One long-lived client for every provider, as in production."""
    client = Http2Client(ca_file=str(sim.ca_file))
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def apns_credentials(sim_control: httpx.Client) -> ApnsCredentials:
    response = sim_control.post("/_sim/apns/keys", json={"topics": [APNS_TOPIC]})
    response.raise_for_status()
    key = response.json()
    return ApnsCredentials(key["key_id"], key["team_id"], key["private_key_pem"], APNS_TOPIC)


def _issue_service_account(control: httpx.Client) -> dict[str, Any]:
    response = control.post("/_sim/fcm/service-accounts", json={})
    response.raise_for_status()
    account: dict[str, Any] = response.json()
    return account


@pytest.fixture(scope="session")
def fcm_account(sim_control: httpx.Client) -> dict[str, Any]:
    return _issue_service_account(sim_control)


@pytest.fixture(scope="session")
def other_fcm_account(sim_control: httpx.Client) -> dict[str, Any]:
    """A second Firebase project, for SENDER_ID_MISMATCH."""
    return _issue_service_account(sim_control)


def _vapid_credentials() -> WebPushCredentials:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    encoded = base64.urlsafe_b64encode(public).rstrip(b"=").decode()
    return WebPushCredentials(pem, encoded, "mailto:push@example.com")


@pytest.fixture(scope="session")
def make_vapid_credentials() -> Callable[[], WebPushCredentials]:
    """A fresh VAPID key pair, as a site generates once for its applicationServerKey."""
    return _vapid_credentials


@pytest.fixture(scope="session")
def vapid_credentials() -> WebPushCredentials:
    return _vapid_credentials()


@pytest.fixture(params=APNS_ENDPOINTS)
def apns_url(
    request: pytest.FixtureRequest, sim: SimulatorHandle, sim_control: httpx.Client
) -> str:
    return apns_endpoint(sim, sim_control, request.param)


@pytest.fixture
def apns(
    apns_credentials: ApnsCredentials, http_client: Http2Client, apns_url: str
) -> ApnsProvider:
    return ApnsProvider(
        apns_credentials, http_client, production_url=apns_url, sandbox_url=apns_url
    )


@pytest.fixture
def fcm(fcm_account: dict[str, Any], http_client: Http2Client, sim: SimulatorHandle) -> FcmProvider:
    return FcmProvider(
        FcmCredentials(fcm_account),
        http_client,
        base_url=sim.base_url,
        outbound=LOCAL_SERVERS_POLICY,  # the simulator's token_uri is on 127.0.0.1
    )


@pytest.fixture
def webpush(vapid_credentials: WebPushCredentials, http_client: Http2Client) -> WebPushProvider:
    return WebPushProvider(vapid_credentials, http_client, outbound=LOCAL_SERVERS_POLICY)
