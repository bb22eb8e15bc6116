"""Automations through the Campaigns API 1.1: a `trigger` instead of a date, read back whole,
paused and resumed with `live`, and bad input refused naming the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import ClientApp
from tests.test_campaigns import create, created, get, update

AUTOMATION: dict[str, Any] = {
    "name": "Abandoned cart",
    "live": True,
    "labels": ["reminders"],
    "trigger": {
        "event": "ue.added_to_cart",
        "attributes": {"category": "shoes"},
        "delay_seconds": 3600,
        "at_local_time": "18:30",
        "cancel_events": [{"event": "ue.purchased", "match_attribute": "sku"}],
        "once_per_days": 7,
        "quiet_hours": {"start": "22:00", "end": "08:00"},
        "conversion": {"event": "ue.purchased", "within_hours": 48},
    },
    "messages": [{"language": "en", "body": "Still thinking about {{ event.attributes.sku }}?"}],
}


async def test_an_automation_is_created_read_and_listed(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    token = await created(api, ios_app, AUTOMATION)
    found = (await get(api, ios_app, token)).json()
    assert found["trigger"]["event"] == "ue.added_to_cart"
    assert found["trigger"]["cancel_events"] == [
        {"event": "ue.purchased", "match_attribute": "sku"}
    ]
    assert found["state"] == "active"
    listed = await api.get(
        f"/1.1/{ios_app.api_key}/campaigns/list", headers=ios_app.headers(), params={"live": True}
    )
    assert token in [item["campaign_token"] for item in listed.json()]


async def test_live_false_pauses_and_live_true_resumes(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    token = await created(api, ios_app, AUTOMATION)
    assert (await update(api, ios_app, token, {"live": False})).status_code == 200
    assert (await get(api, ios_app, token)).json()["state"] == "paused"
    assert (await update(api, ios_app, token, {"live": True})).status_code == 200
    assert (await get(api, ios_app, token)).json()["state"] == "active"


async def test_a_campaign_does_not_become_an_automation(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    token = await created(
        api,
        ios_app,
        {
            "name": "Dated",
            "live": False,
            "push_time": "2030-01-01T10:00:00",
            "messages": [{"language": "en", "body": "Hi"}],
        },
    )
    answer = await update(api, ios_app, token, {"trigger": {"event": "ue.x"}})
    assert answer.status_code == 400
    assert "trigger" in answer.json()["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event": "added_to_cart"}, "trigger.event"),
        ({"event": "ue.no spaces"}, "trigger.event"),
        ({"delay_seconds": -1}, "trigger.delay_seconds"),
        ({"delay_seconds": 30 * 86400 + 1}, "trigger.delay_seconds"),
        ({"at_local_time": "24:00"}, "trigger.at_local_time"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "trigger.quiet_hours"),
        ({"quiet_hours": {"start": "22:00"}}, "trigger.quiet_hours.end"),
        ({"once_per_days": 0}, "trigger.once_per_days"),
        ({"cancel_events": [{"event": "ue.x"}] * 11}, "trigger.cancel_events"),
        (
            {"cancel_events": [{"event": "ue.x", "match_attribute": "Bad-Name"}]},
            "trigger.cancel_events.0.match_attribute",
        ),
        ({"attributes": {"Bad-Name": 1}}, "trigger.attributes"),
        ({"conversion": {"event": "ue.x", "within_hours": 0}}, "trigger.conversion.within_hours"),
        ({"unknown": 1}, "trigger.unknown"),
    ],
)
async def test_bad_triggers_are_refused_naming_the_field(
    api: httpx.AsyncClient, ios_app: ClientApp, change: dict[str, Any], field: str
) -> None:
    body = {**AUTOMATION, "trigger": {**AUTOMATION["trigger"], **change}}
    answer = await create(api, ios_app, body)
    assert answer.status_code == 400, answer.text
    assert field in answer.json()["message"]


@pytest.mark.parametrize(
    "extra",
    [
        {"push_time": "now"},
        {"local_push_time": "2030-01-01T10:00:00"},
        {"recurrence": {"repeat_unit": "DAILY"}},
    ],
)
async def test_dates_do_not_apply_to_an_automation(
    api: httpx.AsyncClient, ios_app: ClientApp, extra: dict[str, Any]
) -> None:
    answer = await create(api, ios_app, {**AUTOMATION, **extra})
    assert answer.status_code == 400
    assert "automation" in answer.json()["message"]


async def test_a_long_condition_value_is_refused_naming_its_attribute(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    body = {**AUTOMATION, "trigger": {"event": "ue.x", "attributes": {"sku": "x" * 65}}}
    answer = await create(api, ios_app, body)
    assert answer.status_code == 400
    message = answer.json()["message"]
    assert "trigger.attributes" in message
    assert "'sku'" in message
    assert "64" in message
