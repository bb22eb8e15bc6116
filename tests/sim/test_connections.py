"""The simulators' h2 listener: APNs's 1 stream until a first answer, connections dropped
mid-stream (clarion/sim/h2conn.py), met by Clarion's own HTTP/2 client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from clarion.http2 import Http2Client, HttpRequest, HttpResponse, TransportError
from tests.support.simulator import SimulatorHandle

DEVICE = "ab" * 32


@pytest.fixture
async def client(simulator: SimulatorHandle) -> AsyncIterator[Http2Client]:
    client = Http2Client(ca_file=str(simulator.ca_file))
    yield client
    await client.aclose()


def _listener(control: httpx.Client) -> str:
    url: str = control.get("/_sim/connections").json()["url"]
    return url


def _push(url: str) -> HttpRequest:
    # No provider token: each is answered 403, after the injected delay; any answer will do.
    return HttpRequest("POST", f"{url}/3/device/{DEVICE}", (), b'{"aps": {}}')


async def test_one_stream_until_the_first_answer_is_honoured_without_losing_requests(
    client: Http2Client, control: httpx.Client
) -> None:
    # 10 streams once a connection has answered, 1 before: 300 requests answered 50 ms late
    # need the second connection, on which libcurl assumes 100 streams until SETTINGS arrive.
    # Without slow start per connection the server refused the excess and requests were lost.
    control.put("/_sim/connections", json={"initial_streams": 1, "streams": 10})
    control.put("/_sim/apns/faults", json={"delay_ms": 50})
    url = _listener(control)

    results = await client.request_many([_push(url)] * 300)

    assert [r for r in results if not isinstance(r, HttpResponse)] == []
    assert {r.status for r in results if isinstance(r, HttpResponse)} == {403}
    seen = control.get("/_sim/connections").json()
    assert seen["refused_streams"] == 0
    assert seen["connections"] == 2


async def test_a_connection_dropped_mid_stream_fails_its_requests_as_written(
    client: Http2Client, control: httpx.Client
) -> None:
    control.put("/_sim/connections", json={"drop_rate": 1.0})
    url = _listener(control)

    with pytest.raises(TransportError) as caught:
        await client.request(_push(url))

    assert caught.value.written  # read by the server, which acted on it: outcome unknown
    assert control.get("/_sim/connections").json()["dropped"] >= 1
    assert control.get("/_sim/stats").json()["apns"]["requests"] >= 1


def test_connection_rules_are_validated_and_reset(control: httpx.Client) -> None:
    assert control.put("/_sim/connections", json={"drop_rate": 2}).status_code == 400
    assert control.put("/_sim/connections", json={"initial_streams": 0}).status_code == 400
    control.put("/_sim/connections", json={"initial_streams": 5, "drop_rate": 0.5})

    control.post("/_sim/reset")

    rules = control.get("/_sim/connections").json()
    assert (rules["initial_streams"], rules["streams"], rules["drop_rate"]) == (1, 1000, 0.0)
    assert rules["url"].startswith("https://127.0.0.1:")
