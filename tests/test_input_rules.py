"""What a request may hold (clarion.formats): text Clarion can store on both databases, integers
that fit 64 bits. Each refusal is a 400 in Batch's format naming the field, with nothing stored.

Every test runs on SQLite and PostgreSQL (the `backend` fixture): before the rule, NUL was a 500
on PostgreSQL and stored on SQLite, and a lone surrogate or a 20-digit number a 500 on both.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute

from clarion.audiences.models import Audience
from clarion.campaigns.models import Campaign
from clarion.custom_data.models import ProfileAttribute
from clarion.delivery.models import Send
from clarion.events.models import TrackedEvent
from clarion.formats import stored_text, text_problem
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from tests.conftest import ClientApp

TWENTY_DIGITS = "12345678901234567890"  # > 2**63 - 1 = 9223372036854775807
JSON = {"Content-Type": "application/json"}


def raw(document: str) -> bytes:
    """A JSON text as sent on the wire, escapes kept: `"\\ud800"` stays a lone surrogate."""
    return document.encode()


def assert_refused(response: httpx.Response, field: str, *, code: int = 31) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == code, body
    message: str = body["message"]
    assert message.split(": ")[1] == field, message
    return message


async def count(runtime: Runtime, app_column: InstrumentedAttribute[int], app: ClientApp) -> int:
    """Rows of a table (given by its app_id column) that belong to `app`."""
    async with runtime.sessions() as session:
        return await session.scalar(select(func.count()).where(app_column == app.app_id)) or 0


class TestTextRule:
    @pytest.mark.parametrize(
        ("text", "why"),
        [
            ("a\x00b", "NUL (U+0000)"),
            ("\ud800", "a lone surrogate (U+D800)"),
            ("\udfff tail", "a lone surrogate (U+DFFF)"),
            ("\x1b[31mred", "the control character U+001B"),
            ("\x0c", "the control character U+000C"),
            ("\ufffe", "the non-character U+FFFE"),
        ],
    )
    def test_refused(self, text: str, why: str) -> None:
        assert text_problem(text) == f"contains {why}, which Clarion does not accept in text"

    @pytest.mark.parametrize(
        "text", ["", "tab\tnew line\ncr\r", "del\x7f c1\x85", "émoji 🎉", "\U0010fffd", "日本"]
    )
    def test_accepted(self, text: str) -> None:
        assert stored_text(text) == text


class TestIntegers:
    @pytest.mark.parametrize("route", ["1.1/{key}/campaigns/list", "1.0/{key}/custom-audience"])
    async def test_list_offset_beyond_64_bits(
        self, api: httpx.AsyncClient, ios_app: ClientApp, route: str
    ) -> None:
        url = "/" + route.format(key=ios_app.api_key)
        response = await api.get(url, params={"from": TWENTY_DIGITS}, headers=ios_app.headers())
        assert_refused(response, "query.from")
        largest = await api.get(url, params={"from": str(2**63 - 1)}, headers=ios_app.headers())
        assert largest.status_code == 200, largest.text

    async def test_admin_app_id_beyond_64_bits(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await api.get(f"/admin/v1/apps/{TWENTY_DIGITS}", headers=ios_app.headers())
        assert_refused(response, "path.app_id")

    @pytest.mark.parametrize(
        ("number", "why"),
        [
            (str(2**63), "is beyond what a 64-bit integer holds"),
            (str(-(2**63) - 1), "is beyond what a 64-bit integer holds"),
            (str(10**400), "is beyond what a 64-bit integer holds"),
            ("NaN", "must be a finite number"),
            ("-Infinity", "must be a finite number"),
        ],
    )
    async def test_custom_data_numbers_a_database_cannot_hold(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, number: str, why: str
    ) -> None:
        response = await api.post(
            f"/1.0/{ios_app.api_key}/data/users/u1",
            headers={**ios_app.headers(), **JSON},
            content=raw(f'{{"values": {{"u.points": {number}, "u.ok": 1}}}}'),
        )
        message = assert_refused(response, "values.u.points")
        assert message.endswith(why)
        assert await count(runtime, ProfileAttribute.app_id, ios_app) == 0

    async def test_campaign_capping_beyond_64_bits(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        body = {
            "name": "capped",
            "live": False,
            "push_time": "2030-01-01T10:00:00",
            "recurrence": {"repeat_unit": "DAILY"},
            "capping": 2**64,
            "messages": [{"language": "en", "body": "hi"}],
        }
        response = await api.post(
            f"/1.1/{ios_app.api_key}/campaigns/create", headers=ios_app.headers(), json=body
        )
        assert_refused(response, "capping")
        assert await count(runtime, Campaign.app_id, ios_app) == 0


class TestDates:
    """A date converted to UTC, or a day added to it, must stay within Python's calendar."""

    async def test_sdk_times_at_the_calendar_edges(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        base = f"/sdk/v1/{ios_app.api_key}/installations/i1"
        assert (await api.put(base, json={"push_optin": True})).status_code == 200
        for when in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
            opened = await api.post(f"{base}/app-opens", json={"occurred_at": when})
            message = assert_refused(opened, "occurred_at")
            assert message.endswith("must be a date between 0001-01-02 and 9999-12-30 (UTC)")
            tracked = await api.post(
                f"{base}/events", json={"events": [{"name": "bought", "occurred_at": when}]}
            )
            assert_refused(tracked, "events.0.occurred_at")
        assert await count(runtime, TrackedEvent.app_id, ios_app) == 0

    async def test_trigger_event_time_and_date_attributes(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        url = f"/1.0/{ios_app.api_key}/events/users/u1"
        late = {"events": [{"name": "ue.x", "time": "9999-12-31T23:59:59-05:00"}]}
        assert_refused(await api.post(url, headers=ios_app.headers(), json=late), "events.0.time")
        far = {"events": [{"name": "ue.x", "attributes": {"date(due)": 1e20}}]}
        response = await api.post(url, headers=ios_app.headers(), json=far)
        assert_refused(response, "events.0.attributes")
        assert await count(runtime, TrackedEvent.app_id, ios_app) == 0

    async def test_custom_data_date_beyond_the_calendar(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        for when in (1e20, -1e15, 253402300800):  # the last: 10000-01-01
            response = await api.post(
                f"/1.0/{ios_app.api_key}/data/users/u1",
                headers=ios_app.headers(),
                json={"values": {"date(u.renewal)": when}},
            )
            # Custom Data's own rules name the key inside the message (a model-level error).
            message = assert_refused(response, "body")
            assert "values: date(u.renewal): must be a date between" in message
        assert await count(runtime, ProfileAttribute.app_id, ios_app) == 0


class TestText:
    async def test_lone_surrogate_in_a_custom_data_value(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        response = await api.post(
            f"/1.0/{ios_app.api_key}/data/users/u1",
            headers={**ios_app.headers(), **JSON},
            content=raw('{"values": {"u.nickname": "\\ud800", "u.age": 3}}'),
        )
        message = assert_refused(response, "values.u.nickname")
        assert "a lone surrogate (U+D800)" in message
        assert await count(runtime, ProfileAttribute.app_id, ios_app) == 0

    async def test_nul_in_a_custom_data_value_and_key(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        url = f"/1.0/{ios_app.api_key}/data/users/u1"
        response = await api.post(url, headers=ios_app.headers(), json={"values": {"u.a": "x\0"}})
        assert_refused(response, "values.u.a")
        tags = await api.post(url, headers=ios_app.headers(), json={"values": {"ut.t": ["\0"]}})
        assert_refused(tags, "values.ut.t.0")
        bulk = await api.post(
            f"/1.0/{ios_app.api_key}/data/users",
            headers=ios_app.headers(),
            json=[
                {"id": "ok", "update": {"values": {"u.a": "fine"}}},
                {"id": "u\0", "update": {"values": {"u.a": "fine"}}},
            ],
        )
        assert_refused(bulk, "1.id")
        deletes = await api.request(
            "DELETE",
            f"/1.0/{ios_app.api_key}/data/users",
            headers={**ios_app.headers(), **JSON},
            content=raw('["ok", 7, "\\udc00"]'),
        )
        assert_refused(deletes, "2")
        assert await count(runtime, ProfileAttribute.app_id, ios_app) == 0

    async def test_nul_in_a_custom_id_in_the_path(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        base = f"/1.0/{ios_app.api_key}"
        update = await api.post(
            f"{base}/data/users/bad%00id", headers=ios_app.headers(), json={"values": {"u.a": 1}}
        )
        assert_refused(update, "path.custom_id")
        delete = await api.delete(f"{base}/data/users/bad%00id", headers=ios_app.headers())
        assert_refused(delete, "path.custom_id")
        events = await api.post(
            f"{base}/events/users/bad%00id",
            headers=ios_app.headers(),
            json={"events": [{"name": "ue.x"}]},
        )
        assert_refused(events, "path.custom_id")
        assert await count(runtime, ProfileAttribute.app_id, ios_app) == 0
        assert await count(runtime, TrackedEvent.app_id, ios_app) == 0

    async def test_nul_in_an_event_label(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        response = await api.post(
            f"/1.0/{ios_app.api_key}/events/users/u1",
            headers=ios_app.headers(),
            json={"events": [{"name": "ue.ok"}, {"name": "ue.bought", "label": "gift\0"}]},
        )
        assert_refused(response, "events.1.label")
        attribute = await api.post(
            f"/1.0/{ios_app.api_key}/events/users/u1",
            headers=ios_app.headers(),
            json={"events": [{"name": "ue.bought", "attributes": {"sku": "\x1b[2J"}}]},
        )
        assert_refused(attribute, "events.0.attributes.sku")
        assert await count(runtime, TrackedEvent.app_id, ios_app) == 0

    async def test_transactional_send_with_nul_in_its_ids_and_title(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        url = f"/1.1/{ios_app.api_key}/transactional/send"
        ids = await api.post(
            url,
            headers=ios_app.headers(),
            json={
                "group_id": "g",
                "recipients": {"custom_ids": ["ok", "a\0b"]},
                "message": {"body": "hi"},
            },
        )
        assert_refused(ids, "recipients.custom_ids.1")
        title = await api.post(
            url,
            headers=ios_app.headers(),
            json={
                "group_id": "g",
                "recipients": {"install_ids": ["i1"]},
                "message": {"title": "t\0", "body": "hi"},
            },
        )
        assert_refused(title, "message.title")
        payload = await api.post(
            url,
            headers=ios_app.headers(),
            json={
                "group_id": "g",
                "recipients": {"tokens": ["tok"]},
                "message": {"body": "hi"},
                "custom_payload": orjson.dumps({"k": "\0"}).decode(),
            },
        )
        assert_refused(payload, "custom_payload")
        assert await count(runtime, Send.app_id, ios_app) == 0

    async def test_nul_in_path_tokens_and_names(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        key, headers = ios_app.api_key, ios_app.headers()
        cases: list[tuple[str, str, str, Any]] = [
            ("GET", f"/1.1/{key}/campaigns/c%00", "path.token", None),
            ("POST", f"/1.1/{key}/campaigns/update/c%00", "path.token", {"live": True}),
            ("GET", f"/1.1/{key}/transactional/sends/t%00", "path.token", None),
            ("PUT", f"/1.0/{key}/custom-audience/a%00", "path.name", {"type": "custom_ids"}),
            ("GET", f"/1.1/{key}/custom-audience/a%00", "path.name", None),
            ("GET", f"/1.0/{key}/gdpr/request/r%00", "path.request_id", None),
            ("GET", f"/1.0/{key}/imports/s%00", "path.name", None),
            ("GET", f"/1.0/{key}/exports/destinations/d%00", "path.name", None),
        ]
        for method, url, field, body in cases:
            response = await api.request(method, url, headers=headers, json=body)
            assert_refused(response, field)
        sdk = await api.put(f"/sdk/v1/{key}/installations/i%00", json={"push_optin": True})
        assert_refused(sdk, "path.install_id")
        assert await count(runtime, Audience.app_id, ios_app) == 0
        assert await count(runtime, Installation.app_id, ios_app) == 0

    async def test_sdk_fields(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        response = await api.put(
            f"/sdk/v1/{ios_app.api_key}/installations/i1",
            headers=JSON,
            content=raw('{"push_optin": true, "device_model": "\\ud83d"}'),
        )
        assert_refused(response, "device_model")
        assert await count(runtime, Installation.app_id, ios_app) == 0

    async def test_control_characters_in_a_campaign(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        body = {
            "name": "bell\x07",
            "live": False,
            "push_time": "now",
            "messages": [{"language": "en", "body": "hi"}],
        }
        url = f"/1.1/{ios_app.api_key}/campaigns/create"
        response = await api.post(url, headers=ios_app.headers(), json=body)
        assert_refused(response, "name")
        query = {**body, "name": "fine", "targeting": {"query": {"c.city": "Par\0is"}}}
        response = await api.post(url, headers=ios_app.headers(), json=query)
        assert_refused(response, "targeting.query.c.city")
        assert await count(runtime, Campaign.app_id, ios_app) == 0

    async def test_tab_new_line_and_unicode_are_text(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        response = await api.post(
            f"/1.1/{ios_app.api_key}/transactional/send",
            headers=ios_app.headers(),
            json={
                "group_id": "g",
                "recipients": {"custom_ids": ["émilie 🎉"]},
                "message": {"title": "Line 1\nLine 2", "body": "Tab\there \x7f"},
            },
        )
        assert response.status_code == 201, response.text
        assert await count(runtime, Send.app_id, ios_app) == 1
