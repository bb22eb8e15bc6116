"""Which app key each route takes (docs/security.md, "Keys"): the Dev key gets what Batch gives
it, transactional sends and campaign create, update and delete, all reaching debug installations
only; every route that reads or changes the app's data or settings takes the Live key, and
answers the Dev key 403/12 before changing anything."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import select

import clarion
from clarion import http
from clarion.db import Base
from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.test_campaigns import EXAMPLE, error

# The only routes of Batch's server APIs that take the Dev key (spec §1.3, §4; the issue's
# reading of Batch: sends to debug installations, campaign create/update/delete).
DEV_KEY_ROUTES = re.compile(
    r"/1\.[01]/\{api_key\}/transactional/send/?"
    r"|/1\.1/\{api_key\}/(in-app-)?campaigns/(create|update/\{token\}|delete/\{token\})/?"
)
# Public files, no key at all: the Web SDK's scripts, which any site's pages load.
PUBLIC_ROUTES = re.compile(r"/sdk/web/v1/\{file_name\}")
KINDS: dict[Callable[..., Any], str] = {
    http.rest_app_live: "Live",
    http.rest_app: "Live or Dev",
    http.sdk_app: "SDK",
    http.rest_company: "REST key",
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def api_routes() -> Iterator[tuple[str, APIRoute]]:
    """Every route of every router of every clarion.<package>.api module but the dashboard's
    (its sessions act with the Live key's rights, clarion.dashboard.service.company_app)."""
    for module in pkgutil.iter_modules(clarion.__path__):
        if not module.ispkg or module.name == "dashboard":
            continue
        try:
            api = importlib.import_module(f"clarion.{module.name}.api")
        except ModuleNotFoundError:
            continue
        routers = [r for r in vars(api).values() if isinstance(r, APIRouter)]
        for router in routers:
            for route in router.routes:
                if isinstance(route, APIRoute):
                    yield module.name, route


def key_kind(route: APIRoute) -> str:
    found = [KINDS[call] for call in _calls(route.dependant) if call in KINDS]
    return "Live" if "Live" in found else (found[0] if found else "none")


def test_every_route_takes_the_keys_of_the_table() -> None:
    kinds = {}
    for package, route in api_routes():
        for method in route.methods:
            kinds[(package, method, route.path)] = key_kind(route)
    assert len(kinds) >= 60
    assert {path for _, _, path in kinds} >= {
        "/sdk/web/v1/{file_name}",
        "/sdk/v1/{api_key}/installations/{install_id}/inapp-messages",
        "/admin/v1/apps/{app_id}/inapp-themes/{code}",
    }
    for (_, method, path), kind in kinds.items():
        if path.startswith("/admin/"):
            expected = "REST key"  # no app key: the company's REST key administers its apps
        elif PUBLIC_ROUTES.fullmatch(path):
            expected = "none"
        elif path.startswith("/sdk/"):
            expected = "SDK"  # debug builds register with the Dev key
        elif DEV_KEY_ROUTES.fullmatch(path):
            expected = "Live or Dev"
        else:
            expected = "Live"
        assert kind == expected, f"{method} {path}"


async def app_rows(runtime: Runtime, app: ClientApp) -> dict[str, list[str]]:
    """Every row of every table that belongs to the app, as text."""
    rows: dict[str, list[str]] = {}
    async with runtime.sessions() as session:
        for table in Base.metadata.sorted_tables:
            if "app_id" in table.c:
                found = await session.execute(select(table).where(table.c.app_id == app.app_id))
                rows[table.name] = sorted(repr(tuple(row)) for row in found)
    return rows


NO_ID = "00000000-0000-4000-8000-000000000000"
# (method, path after /{version}/{key}/, body, the Live key's answer): every route refused to
# the Dev key, each with a call the Live key makes to it; the names are those setup() makes.
REFUSED: list[tuple[str, str, Any, int]] = [
    # Campaigns: reads, and the Clarion estimate
    ("GET", "1.1/{key}/campaigns/list", None, 200),
    ("GET", "1.1/{key}/campaigns/{live}", None, 200),
    ("GET", "1.1/{key}/campaigns/stats/{live}", None, 200),
    ("POST", "1.1/{key}/campaigns/estimate", {"targeting": {}}, 200),
    # In-app campaigns: reads
    ("GET", "1.1/{key}/in-app-campaigns/list", None, 200),
    ("GET", "1.1/{key}/in-app-campaigns/{live}", None, 404),
    ("GET", "1.1/{key}/in-app-campaigns/stats/{live}", None, 404),
    # Transactional: a send's outcome
    ("GET", "1.1/{key}/transactional/sends/" + NO_ID, None, 404),
    # Custom Data
    ("POST", "1.0/{key}/data/users/alice", {"values": {"u.age": 40}}, 200),
    ("POST", "1.0/{key}/data/users", [{"id": "bob", "update": {"values": {"u.age": 3}}}], 200),
    # Trigger Events
    ("POST", "1.0/{key}/events/users/alice", {"events": [{"name": "ue.bought"}]}, 202),
    ("POST", "1.0/{key}/events/users", [{"id": "bob", "events": [{"name": "ue.bought"}]}], 202),
    # Custom Audience, and the file upload
    ("GET", "1.0/{key}/custom-audience", None, 200),
    ("GET", "1.1/{key}/custom-audience/vip", None, 200),
    ("PUT", "1.0/{key}/custom-audience/vip", {"type": "custom_ids", "ids": ["carol"]}, 202),
    (
        "PATCH",
        "1.0/{key}/custom-audience/vip",
        {"type": "custom_ids", "ids": [{"action": "add", "id": "dan"}]},
        202,
    ),
    ("PUT", "1.1/{key}/custom-audience/devices", {"ids": [{"id": "install-1"}]}, 202),
    (
        "PATCH",
        "1.1/{key}/custom-audience/devices",
        {"ids": [{"action": "add", "id": "install-2"}]},
        202,
    ),
    ("PUT", "1.0/{key}/custom-audience/uploaded/file", b"erin\n", 202),
    # Imports
    ("GET", "1.0/{key}/imports", None, 200),
    ("GET", "1.0/{key}/imports/crm", None, 200),
    (
        "POST",
        "1.0/{key}/imports",
        {"name": "crm2", "url": "s3://b/p", "id_type": "custom_ids", "audience_name": "a"},
        201,
    ),
    ("PATCH", "1.0/{key}/imports/crm", {"on_change": "apply_changes"}, 200),
    ("POST", "1.0/{key}/imports/crm/run", None, 202),
    ("GET", "1.0/{key}/imports/crm/runs", None, 200),
    # Daily exports
    ("GET", "1.0/{key}/exports/destinations", None, 200),
    ("GET", "1.0/{key}/exports/destinations/crm", None, 200),
    (
        "POST",
        "1.0/{key}/exports/destinations",
        {"name": "crm2", "kind": "push_events", "url": "s3://bucket/out"},
        201,
    ),
    ("PATCH", "1.0/{key}/exports/destinations/crm", {"gzip": True}, 200),
    ("GET", "1.0/{key}/exports/destinations/crm/runs", None, 200),
    # Export API
    ("POST", "1.0/{key}/export/campaign/{live}/ids", {"from": "now", "to": "now"}, 201),
    ("POST", "1.0/{key}/export/campaign/{live}/events", {"from": "now", "to": "now"}, 201),
    ("POST", "1.0/{key}/export/inapp-campaign/{live}/events", {"from": "now", "to": "now"}, 201),
    ("GET", "1.0/{key}/export/request/" + NO_ID, None, 404),
    ("GET", "1.0/{key}/export/request/" + NO_ID + "/results/x.csv", None, 404),
    # GDPR
    (
        "POST",
        "1.0/{key}/gdpr/request",
        {"request_type": "remove", "id": {"type": "custom_id", "value": "alice"}},
        201,
    ),
    ("GET", "1.0/{key}/gdpr/requests", None, 200),
    ("GET", "1.0/{key}/gdpr/request/" + NO_ID, None, 404),
    ("GET", "1.0/{key}/gdpr/request/" + NO_ID + "/data", None, 404),
    # What destroys, last
    ("DELETE", "1.0/{key}/data/users/alice", None, 200),
    ("DELETE", "1.0/{key}/data/users", ["bob"], 200),
    ("DELETE", "1.0/{key}/custom-audience/vip", None, 200),
    ("DELETE", "1.0/{key}/imports/crm", None, 204),
    ("DELETE", "1.0/{key}/exports/destinations/crm", None, 204),
    ("POST", "1.1/{key}/campaigns/update/{live}", {"name": "Renamed"}, 200),
    ("POST", "1.1/{key}/campaigns/delete/{live}", None, 200),
]


async def call(
    api: httpx.AsyncClient, app: ClientApp, key: str, route: tuple[str, str, Any, int], live: str
) -> httpx.Response:
    method, path, body, _ = route
    url = "/" + path.format(key=key, live=live)
    if isinstance(body, bytes):
        return await api.request(method, url, headers=app.headers(), content=body)
    return await api.request(method, url, headers=app.headers(), json=body)


async def setup(api: httpx.AsyncClient, app: ClientApp) -> str:
    """What the refused calls would read or change, made with the Live key; returns the token
    of a campaign of the Live key."""
    base, headers = f"/1.0/{app.api_key}", app.headers()
    made = [
        await api.post(f"/1.1/{app.api_key}/campaigns/create", headers=headers, json=EXAMPLE),
        await api.post(f"{base}/data/users/alice", headers=headers, json={"values": {"u.age": 3}}),
        await api.put(
            f"{base}/custom-audience/vip",
            headers=headers,
            json={"type": "custom_ids", "ids": ["alice", "bob"]},
        ),
        await api.post(
            f"{base}/imports",
            headers=headers,
            json={"name": "crm", "url": "s3://b/p", "id_type": "custom_ids", "audience_name": "a"},
        ),
        await api.post(
            f"{base}/exports/destinations",
            headers=headers,
            json={"name": "crm", "kind": "push_events", "url": "s3://bucket/out"},
        ),
    ]
    assert all(response.is_success for response in made), [r.text for r in made]
    token: str = made[0].json()["campaign_token"]
    return token


async def test_the_dev_key_is_refused_where_it_would_read_or_destroy_and_changes_nothing(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    live_campaign = await setup(api, ios_app)
    before = await app_rows(runtime, ios_app)
    for route in REFUSED:
        refused = await call(api, ios_app, ios_app.dev_api_key, route, live_campaign)
        message = error(refused, 403, 12)
        assert "Dev API key" in message, (route, message)
    assert await app_rows(runtime, ios_app) == before
    # The Live key makes the same calls.
    for route in REFUSED:
        answer = await call(api, ios_app, ios_app.api_key, route, live_campaign)
        assert answer.status_code == route[3], (route, answer.text)


async def test_the_dev_key_creates_changes_and_deletes_its_own_campaigns_and_sends(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    dev = ios_app.dev_api_key
    headers = ios_app.headers()
    created = await api.post(
        f"/1.1/{dev}/campaigns/create", headers=headers, json={**EXAMPLE, "live": False}
    )
    assert created.status_code == 201, created.text
    token = created.json()["campaign_token"]
    updated = await api.post(
        f"/1.1/{dev}/campaigns/update/{token}", headers=headers, json={"name": "Debug run"}
    )
    assert updated.status_code == 200, updated.text
    got = (await api.get(f"/1.1/{ios_app.api_key}/campaigns/{token}", headers=headers)).json()
    assert (got["name"], got["dev_only"]) == ("Debug run", True)
    deleted = await api.post(f"/1.1/{dev}/campaigns/delete/{token}", headers=headers)
    assert deleted.status_code == 200, deleted.text
    sent = await api.post(
        f"/1.1/{dev}/transactional/send",
        headers=headers,
        json={"group_id": "debug", "recipients": {"custom_ids": ["gus"]}, "message": {"body": "x"}},
    )
    assert sent.status_code == 201, sent.text


@pytest.mark.parametrize("action", ["update", "delete"])
async def test_the_dev_key_cannot_change_a_campaign_of_the_live_key(
    action: str, api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    headers = ios_app.headers()
    token = await setup(api, ios_app)
    before = (await api.get(f"/1.1/{ios_app.api_key}/campaigns/{token}", headers=headers)).json()
    refused = await api.post(
        f"/1.1/{ios_app.dev_api_key}/campaigns/{action}/{token}",
        headers=headers,
        json={"live": False},
    )
    assert "created with the Live API key" in error(refused, 403, 12)
    after = await api.get(f"/1.1/{ios_app.api_key}/campaigns/{token}", headers=headers)
    assert after.json() == before
