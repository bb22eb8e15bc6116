"""Size limits of a targeting query (docs/targeting.md, "Limits"), and what the scheduler does
with a campaign that can never be sent (a query stored before the limits existed)."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from clarion.campaigns.models import Campaign, CampaignRun
from clarion.db import transaction
from clarion.runtime import Runtime
from clarion.targeting.query import MAX_CONDITIONS, MAX_DEPTH, MAX_LIST, MAX_VALUES
from tests.conftest import ClientApp
from tests.support.clock import Clock
from tests.test_campaign_runs import add_installs, runs_of, scheduler
from tests.test_campaigns import EXAMPLE, campaign_count, create, created, error, get, update

T = datetime(2030, 6, 1, 10, 0, tzinfo=UTC)


def nested_not(depth: int) -> dict[str, Any]:
    query: dict[str, Any] = {"c.plan": "gold"}
    for _ in range(depth):
        query = {"$not": query}
    return query


def long_or(terms: int) -> dict[str, Any]:
    return {"$or": [{f"c.p{i}": i} for i in range(terms)]}


def long_in(values: int) -> dict[str, Any]:
    return {"c.plan": {"$in": [str(i) for i in range(values)]}}


# Each query past a limit, and where the error must point.
OVERSIZE = {
    "or_8000": (long_or(8000), "targeting.query.$or: $or takes at most 1000 items"),
    "or_past_conditions": (
        long_or(MAX_CONDITIONS + 1),
        f"targeting.query.$or.{MAX_CONDITIONS}.c.p{MAX_CONDITIONS}: a query holds at most "
        f"{MAX_CONDITIONS} conditions",
    ),
    "keys_past_conditions": (
        {f"c.p{i}": i for i in range(MAX_CONDITIONS + 1)},
        f"targeting.query.c.p{MAX_CONDITIONS}: a query holds at most",
    ),
    "not_200_deep": (nested_not(200), "targeting.query." + ".".join(["$not"] * (MAX_DEPTH + 1))),
    "not_past_depth": (
        nested_not(MAX_DEPTH + 1),
        "targeting.query." + ".".join(["$not"] * (MAX_DEPTH + 1)) + ": $and, $or and $not nest",
    ),
    "in_90000": (long_in(90_000), f"targeting.query.c.plan.$in: $in takes at most {MAX_LIST}"),
    "contains_past_list": (
        {"t.badges": {"$contains": [f"b{i}" for i in range(MAX_LIST + 1)]}},
        "targeting.query.t.badges.$contains: $contains takes at most",
    ),
    "contains_past_conditions": (
        {"t.badges": {"$contains": [f"b{i}" for i in range(MAX_CONDITIONS + 1)]}},
        "targeting.query.t.badges.$contains: a query holds at most",
    ),
    "values_in_all": (
        {"$and": [long_in(MAX_LIST) for _ in range(MAX_VALUES // MAX_LIST + 1)]},
        f"targeting.query.$and.{MAX_VALUES // MAX_LIST}.c.plan.$in: a query holds at most "
        f"{MAX_VALUES} values",
    ),
}
AT_THE_LIMITS = {
    "or": long_or(MAX_CONDITIONS),
    "not": nested_not(MAX_DEPTH),
    "in": {
        "$and": [{f"c.p{i}": {"$in": list(range(MAX_LIST))}} for i in range(MAX_VALUES // MAX_LIST)]
    },
    "contains": {"t.badges": {"$contains": [f"b{i}" for i in range(MAX_CONDITIONS)]}},
}


async def estimate(api: httpx.AsyncClient, app: ClientApp, targeting: Any) -> httpx.Response:
    return await api.post(
        f"/1.1/{app.api_key}/campaigns/estimate",
        headers=app.headers(),
        json={"targeting": targeting},
    )


@pytest.mark.parametrize("case", list(OVERSIZE))
async def test_an_oversize_query_is_a_400_naming_it_and_nothing_is_stored(
    api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp, case: str
) -> None:
    query, expected = OVERSIZE[case]
    message = error(await estimate(api, ios_app, {"query": query}), 400, 31)
    assert message.startswith(f"MALFORMED_PARAMETER: {expected}"), message

    body = {**EXAMPLE, "push_time": "now", "targeting": {"query": query}}
    message = error(await create(api, ios_app, body), 400, 31)
    assert message.startswith(f"MALFORMED_PARAMETER: {expected}"), message
    assert await campaign_count(runtime, ios_app) == 0

    token = await created(api, ios_app, targeting={"query": {"c.plan": "gold"}})
    response = await update(api, ios_app, token, {"targeting": {"query": query}})
    assert error(response, 400, 31).startswith(f"MALFORMED_PARAMETER: {expected}")
    assert (await get(api, ios_app, token)).json()["targeting"] == {"query": {"c.plan": "gold"}}


@pytest.mark.parametrize("case", list(AT_THE_LIMITS))
async def test_a_query_at_the_limits_is_accepted(
    api: httpx.AsyncClient, ios_app: ClientApp, case: str
) -> None:
    response = await estimate(api, ios_app, {"query": AT_THE_LIMITS[case]})
    assert response.status_code == 200, response.text
    await created(api, ios_app, targeting={"query": AT_THE_LIMITS[case]})


async def test_custom_audience_names_are_limited(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    names = [f"audience-{i}" for i in range(101)]
    message = error(await estimate(api, ios_app, {"custom_audiences": names}), 400, 31)
    assert message.startswith("MALFORMED_PARAMETER: targeting.custom_audiences"), message


async def old_campaign(runtime: Runtime, app: ClientApp, query: dict[str, Any]) -> str:
    """A live campaign due at T whose query was stored before the limits existed: inserted as
    the row is, since the API refuses it now."""
    token = secrets.token_hex(16)
    async with transaction(runtime.sessions) as session:
        session.add(
            Campaign(
                token=token,
                app_id=app.app_id,
                name="old",
                state="scheduled",
                body={**EXAMPLE, "push_time": "now", "targeting": {"query": query}},
                next_occurrence=0,
                next_run_at=T,
                created_at=T - timedelta(days=30),
                updated_at=T - timedelta(days=30),
            )
        )
    return token


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]


@pytest.mark.parametrize("query", [long_or(8000), nested_not(199)], ids=["or_8000", "not_199"])
async def test_a_campaign_that_cannot_be_sent_fails_once_and_says_why(
    api: httpx.AsyncClient,
    runtime: Runtime,
    ios_app: ClientApp,
    caplog: pytest.LogCaptureFixture,
    query: dict[str, Any],
) -> None:
    await add_installs(runtime, ios_app, 2)
    token = await old_campaign(runtime, ios_app, query)
    caplog.set_level(logging.WARNING, logger="clarion.campaigns.tasks")
    clock = Clock(T)
    for minute in range(3):
        clock.now = T + timedelta(minutes=minute)
        await scheduler(runtime, clock).tick()

    [run] = await runs_of(runtime, token)
    assert run.state == "failed"
    assert run.failure is not None
    assert run.failure.startswith("targeting.query.")
    described = (await get(api, ios_app, token)).json()
    assert described["state"] == "failed"
    assert described["failure"] == run.failure
    assert tracebacks(caplog) == []
    assert [r.getMessage() for r in caplog.records if token in r.getMessage()] == [
        f"campaign {token} failed and will not be retried: {run.failure}"
    ]


async def test_a_run_started_before_the_limits_fails_once(
    api: httpx.AsyncClient,
    runtime: Runtime,
    ios_app: ClientApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run fanning out when Clarion was upgraded keeps the body it started with: its
    campaign's body was updated since (valid), the run's was stored before the limits."""
    await add_installs(runtime, ios_app, 2)
    token = secrets.token_hex(16)
    valid = {**EXAMPLE, "push_time": "now"}
    async with transaction(runtime.sessions) as session:
        campaign = Campaign(
            token=token, app_id=ios_app.app_id, name="old", state="running", body=valid
        )
        session.add(campaign)
        await session.flush()
        old = {**valid, "targeting": {"query": nested_not(199)}}
        session.add(
            CampaignRun(
                campaign_id=campaign.id,
                occurrence=0,
                scheduled_for=T,
                state="fanning_out",
                body=old,
                started_at=T,
            )
        )
    clock = Clock(T)
    caplog.set_level(logging.WARNING, logger="clarion.campaigns.tasks")
    for _ in range(3):
        clock.now += timedelta(minutes=1)
        await scheduler(runtime, clock).tick()

    [run] = await runs_of(runtime, token)
    assert (run.state, run.failure is not None) == ("failed", True)
    assert (await get(api, ios_app, token)).json()["state"] == "failed"
    assert tracebacks(caplog) == []
    assert len([r for r in caplog.records if token in r.getMessage()]) == 1
