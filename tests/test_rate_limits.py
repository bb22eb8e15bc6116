"""API rate limits (docs/rate-limits.md): Batch's 429/60 with Retry-After, per app key, per
company, shared by the API processes of one PostgreSQL database, and the SDK API's limits per
installation and per address. Buckets refill on an injected clock: no test waits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from clarion.app import create_app
from clarion.config import Settings
from clarion.ratelimit import RateLimits
from clarion.runtime import Runtime
from tests.conftest import PG_ADMIN_URL, ClientApp, make_settings, new_app
from tests.support.clock import Clock
from tests.support.simulator import SimulatorHandle

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
ALL_OFF = {
    "api_rate_limit": 0,
    "api_company_rate_limit": 0,
    "sdk_install_rate_limit": 0,
    "sdk_address_rate_limit": 0,
}


class Instance:
    """One API process: its app, and an HTTP client calling it from `address`."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.runtime: Runtime = app.state.runtime
        self.limits: RateLimits = app.state.rate_limits

    @asynccontextmanager
    async def client(self, address: str = "203.0.113.7") -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as c:
            yield c


@pytest.fixture
def start(
    settings: Settings, sim: SimulatorHandle, tmp_path: Path
) -> Any:  # the migrated database of the backend, and API processes on it with these limits
    @asynccontextmanager
    async def started(clock: Clock, **limits: Any) -> AsyncIterator[Instance]:
        own = make_settings(settings.database_url, tmp_path, sim, **{**ALL_OFF, **limits})
        app = create_app(own, workers=False, clock=clock)
        async with app.router.lifespan_context(app):
            yield Instance(app)

    return started


async def campaigns(client: httpx.AsyncClient, app: ClientApp, key: str = "") -> httpx.Response:
    return await client.get(f"/1.1/{key or app.api_key}/campaigns/list", headers=app.headers())


def assert_refused(response: httpx.Response, what: str) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["code"] == 60
    assert body["message"].startswith("TOO_MANY_REQUESTS: ")
    assert what in body["message"]
    assert response.headers["Retry-After"] == "1"


async def test_burst_over_the_key_limit_is_refused_and_other_keys_go_on(start: Any) -> None:
    clock = Clock(NOW)
    async with start(clock, api_rate_limit=5) as instance, instance.client() as client:
        one = await new_app(instance.runtime, None, "ios", configure=False)
        other = await new_app(instance.runtime, None, "ios", configure=False)
        answers = [(await campaigns(client, one)).status_code for _ in range(8)]
        assert answers == [200] * 5 + [429] * 3
        assert_refused(await campaigns(client, one), "this API key")
        # Another company's key has its own budget.
        assert [(await campaigns(client, other)).status_code for _ in range(5)] == [200] * 5
        # The bucket refills at the rate: a quarter of a second gives one call, a second five.
        clock.advance(timedelta(seconds=0.25))
        assert [(await campaigns(client, one)).status_code for _ in range(2)] == [200, 429]
        clock.advance(timedelta(seconds=1.0))
        assert [(await campaigns(client, one)).status_code for _ in range(6)] == [200] * 5 + [429]
        # An unknown key is refused as such, never counted.
        for _ in range(10):
            assert (await campaigns(client, one, key="NOPE")).status_code == 401


async def test_company_limit_spans_its_apps_and_the_dev_key_is_a_key(start: Any) -> None:
    clock = Clock(NOW)
    async with start(clock, api_rate_limit=2, api_company_rate_limit=3) as instance:
        first = await new_app(instance.runtime, None, "ios", configure=False)
        async with instance.client() as client:
            assert (await campaigns(client, first)).status_code == 200
            assert (await campaigns(client, first)).status_code == 200
            assert_refused(await campaigns(client, first), "this API key")
            # The Dev key has its own bucket (a Dev-key call to a Live route is 403/12, counted).
            dev = await campaigns(client, first, key=first.dev_api_key)
            assert dev.status_code == 403
            # The company has spent 3 of 3: the Dev key's second call is the company's 4th.
            assert_refused(await campaigns(client, first, key=first.dev_api_key), "this company")
            clock.advance(timedelta(seconds=1.0))
            assert (await campaigns(client, first)).status_code == 200


async def test_api_processes_of_one_database_share_the_budget(start: Any, backend: str) -> None:
    clock = Clock(NOW)
    # 100/s: each process takes 5 tokens a round trip (50 ms of calls).
    async with (
        start(clock, api_rate_limit=100) as a,
        start(clock, api_rate_limit=100) as b,
        a.client() as client_a,
        b.client() as client_b,
    ):
        app = await new_app(a.runtime, None, "android", configure=False)
        answers = []
        for _ in range(80):
            answers.append((await campaigns(client_a, app)).status_code)
            answers.append((await campaigns(client_b, app)).status_code)
        if backend == "postgres":
            assert answers.count(200) == 100  # one budget, taken from PostgreSQL
            assert answers.count(429) == 60
            # A round trip per 5 calls, not per call; refusals remembered until the refill.
            shared_a, shared_b = a.limits.shared, b.limits.shared
            assert shared_a is not None
            assert shared_b is not None
            assert shared_a.round_trips + shared_b.round_trips <= 100 // 5 + 2
            clock.advance(timedelta(seconds=0.5))
            after = [(await campaigns(client_b, app)).status_code for _ in range(60)]
            assert after.count(200) == 50
        else:
            # Embedded on SQLite there is one process: each instance counts for itself.
            assert answers.count(200) == 160


async def test_sdk_limits_per_installation_and_per_address(start: Any) -> None:
    clock = Clock(NOW)
    async with start(clock, sdk_install_rate_limit=3, sdk_address_rate_limit=5) as instance:
        app = await new_app(instance.runtime, None, "ios", configure=False)

        async def put(client: httpx.AsyncClient, install_id: str) -> httpx.Response:
            return await client.put(f"/sdk/v1/{app.api_key}/installations/{install_id}", json={})

        async with instance.client("198.51.100.1") as phone, instance.client() as other:
            assert [(await put(phone, "i-1")).status_code for _ in range(4)] == [200] * 3 + [429]
            assert_refused(await put(phone, "i-1"), "this installation")
            # Another installation from the same address: the address has 3 of 5 spent.
            assert [(await put(phone, "i-2")).status_code for _ in range(2)] == [200, 200]
            assert_refused(await put(phone, "i-3"), "this address")
            # The in-app fetch's fast path is behind the same limits.
            fetch = await phone.get(f"/sdk/v1/{app.api_key}/installations/i-2/inapp-messages")
            assert_refused(fetch, "this address")
            # Another address is not held back by this one.
            assert (await put(other, "i-3")).status_code == 200
            clock.advance(timedelta(seconds=1.0))
            assert (await put(phone, "i-1")).status_code == 200


async def test_limits_at_zero_are_off(start: Any) -> None:
    clock = Clock(NOW)
    async with start(clock) as instance, instance.client() as client:
        app = await new_app(instance.runtime, None, "ios", configure=False)
        for _ in range(30):
            assert (await campaigns(client, app)).status_code == 200
            put = await client.put(f"/sdk/v1/{app.api_key}/installations/same", json={})
            assert put.status_code == 200
        assert len(instance.limits.local) == 0


async def test_the_admin_api_is_not_limited(start: Any) -> None:
    clock = Clock(NOW)
    async with start(clock, api_rate_limit=1, api_company_rate_limit=1) as instance:
        app = await new_app(instance.runtime, None, "ios", configure=False)
        async with instance.client() as client:
            for _ in range(5):
                listed = await client.get("/admin/v1/apps", headers=app.headers())
                assert listed.status_code == 200


def test_idle_buckets_are_dropped() -> None:
    """Memory follows the installations of the last second, not all those ever seen."""
    clock = Clock(NOW)
    limits = RateLimits(Settings(sdk_install_rate_limit=20), engine=None, clock=clock)
    for i in range(1000):
        limits.sdk_call(api_key="K", install_id=str(i), address=None)
    assert len(limits.local) == 1000
    clock.advance(timedelta(seconds=1.0))  # every bucket is full again
    limits.sdk_call(api_key="K", install_id="new", address=None)
    assert len(limits.local) == 1


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"CLARION_API_RATE_LIMIT": "-1"}, "api_rate_limit"),
        ({"CLARION_SDK_ADDRESS_RATE_LIMIT": "lots"}, "sdk_address_rate_limit"),
        ({"CLARION_API_COMPANY_RATE_LIMIT": "inf"}, "api_company_rate_limit"),
        ({"CLARION_RATE_LIMIT_STORE": "redis"}, "rate_limit_store"),
        ({"CLARION_RATE_LIMIT_STORE": "postgres"}, "needs CLARION_DATABASE_URL"),
    ],
)
def test_bad_settings_stop_the_start(
    variables: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=named):
        Settings()


async def test_loopback_has_no_address_limit(start: Any) -> None:
    """A proxy on this machine that does not pass the client's address must not put every
    device in one bucket: only the installation's limit applies."""
    clock = Clock(NOW)
    async with start(clock, sdk_install_rate_limit=2, sdk_address_rate_limit=2) as instance:
        app = await new_app(instance.runtime, None, "ios", configure=False)
        async with instance.client("127.0.0.1") as local:
            for n in range(10):
                put = await local.put(f"/sdk/v1/{app.api_key}/installations/d{n}", json={})
                assert put.status_code == 200
            again = await local.put(f"/sdk/v1/{app.api_key}/installations/d1", json={})
            assert again.status_code == 200
            assert_refused(
                await local.put(f"/sdk/v1/{app.api_key}/installations/d1", json={}),
                "this installation",
            )


@contextmanager
def unreachable(database_url: str) -> Iterator[None]:
    """PostgreSQL refuses new connections to the database and ends those it has (as in a
    restart), until the block ends."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def test_postgresql_unreachable_is_a_503_with_retry_after(
    start: Any, settings: Settings, backend: str
) -> None:
    if backend != "postgres":
        pytest.skip("the shared buckets are PostgreSQL's; in memory no call needs the database")
    clock = Clock(NOW)
    # 5/s: a round trip takes one token, so every call needs one.
    async with start(clock, api_rate_limit=5) as instance, instance.client() as client:
        app = await new_app(instance.runtime, None, "ios", configure=False)
        assert (await campaigns(client, app)).status_code == 200  # its keys now cached
        with unreachable(settings.database_url):
            down = await campaigns(client, app)
            assert down.status_code == 503, down.text
            assert down.headers["Retry-After"] == "5"
            body = down.json()
            assert body["code"] == 2
            assert body["message"].startswith("MAINTENANCE_ERROR: ")
            # A second later it tries again: a new connection, refused this time.
            clock.advance(timedelta(seconds=1))
            assert (await campaigns(client, app)).status_code == 503
        # Back, but this process tries again only a second after the failed round trip.
        assert (await campaigns(client, app)).status_code == 503
        shared = instance.limits.shared
        assert shared is not None
        round_trips = shared.round_trips
        clock.advance(timedelta(seconds=1))
        assert (await campaigns(client, app)).status_code == 200
        assert shared.round_trips == round_trips + 1
