"""GDPR API 1.0 (spec §10): review archives everything held on an id, remove deletes it and
ignores new data for that id; callbacks reach a real HTTP server."""

from __future__ import annotations

import io
import json
import stat
import threading
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from clarion.custom_data.models import ProfileAttribute
from clarion.db import transaction
from clarion.events.models import TrackedEvent
from clarion.formats import wire_date
from clarion.gdpr.models import GdprRequest
from clarion.gdpr.tasks import delete_expired_archives, process_pending
from clarion.outbound import OutboundPolicy, WebhookClient
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from tests.conftest import ClientApp
from tests.test_campaigns import error
from tests.test_custom_audiences import estimate, put
from tests.test_delivery import register


async def request(
    api: httpx.AsyncClient, app: ClientApp, kind: str, id_type: str, value: str, **extra: Any
) -> str:
    response = await api.post(
        f"/1.0/{app.api_key}/gdpr/request",
        headers=app.headers(),
        json={"request_type": kind, "id": {"type": id_type, "value": value}, **extra},
    )
    assert response.status_code == 201, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def process(runtime: Runtime, outbound: OutboundPolicy | None = None) -> None:
    client = WebhookClient(outbound or runtime.outbound)
    try:
        await process_pending(runtime.sessions, var_dir=runtime.settings.var_dir, client=client)
    finally:
        await client.aclose()


async def status(api: httpx.AsyncClient, app: ClientApp, request_id: str) -> dict[str, Any]:
    response = await api.get(f"/1.0/{app.api_key}/gdpr/request/{request_id}", headers=app.headers())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def a_known_user(api: httpx.AsyncClient, app: ClientApp, custom_id: str) -> None:
    await register(api, app, f"{custom_id}-phone", custom_id=custom_id, push_token="ab" * 32)
    response = await api.post(
        f"/1.0/{app.api_key}/data/users/{custom_id}",
        headers=app.headers(),
        json={"values": {"u.city": "Lyon"}},
    )
    assert response.status_code in (200, 202), response.text
    response = await api.post(
        f"/1.0/{app.api_key}/events/users/{custom_id}",
        headers=app.headers(),
        json={"events": [{"name": "ue.bought"}]},
    )
    assert response.status_code == 202, response.text


async def held(runtime: Runtime, app: ClientApp, custom_id: str) -> dict[str, int]:
    async with runtime.sessions() as session:
        counts = {}
        for name, model in (
            ("installations", Installation),
            ("attributes", ProfileAttribute),
            ("events", TrackedEvent),
        ):
            counts[name] = (
                await session.scalar(
                    select(func.count())
                    .select_from(model)
                    .where(model.app_id == app.app_id, model.custom_id == custom_id)
                )
                or 0
            )
        return counts


async def test_review_makes_an_archive_of_everything_held(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    await a_known_user(api, ios_app, "reviewed")
    request_id = await request(api, ios_app, "review", "custom_id", "reviewed")
    pending = await status(api, ios_app, request_id)
    assert (pending["status"], pending["trigger_type"], pending["id"]) == (
        "pending",
        "api",
        {"type": "custom_id", "value": "reviewed"},
    )
    await process(runtime)
    done = await status(api, ios_app, request_id)
    assert done["status"] == "done"
    assert "error" not in done
    archive = await api.get(done["data_url"], headers=ios_app.headers())
    assert archive.status_code == 200
    files = zipfile.ZipFile(io.BytesIO(archive.content))
    installations = json.loads(files.read("installations.json"))
    assert [i["install_id"] for i in installations] == ["reviewed-phone"]
    attributes = json.loads(files.read("profile_attributes.json"))
    assert [(a["name"], a["text_value"]) for a in attributes] == [("city", "Lyon")]
    assert [e["name"] for e in json.loads(files.read("tracked_events.json"))] == ["ue.bought"]
    # Reviewing deletes nothing.
    assert await held(runtime, ios_app, "reviewed") == {
        "installations": 1,
        "attributes": 1,
        "events": 1,
    }


async def test_remove_deletes_and_ignores_new_data_for_a_month(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    await a_known_user(api, ios_app, "forgotten")
    await put(api, ios_app, "listed", {"type": "custom_ids", "ids": ["forgotten"]})
    assert await estimate(api, ios_app, ["listed"]) == 1
    request_id = await request(api, ios_app, "remove", "custom_id", "forgotten")
    await process(runtime)
    assert (await status(api, ios_app, request_id))["status"] == "done"
    assert await estimate(api, ios_app, ["listed"]) == 0  # the install stays, out of the audience
    assert await held(runtime, ios_app, "forgotten") == {
        "installations": 0,
        "attributes": 0,
        "events": 0,
    }
    # New data for that user is accepted on the wire and ignored.
    await a_known_user(api, ios_app, "forgotten")
    assert await held(runtime, ios_app, "forgotten") == {
        "installations": 0,
        "attributes": 0,
        "events": 0,
    }


async def test_a_removed_install_id_is_refused_by_the_sdk_api(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    await register(api, ios_app, "gone-device")
    await request(api, ios_app, "remove", "install_id", "gone-device")
    await process(runtime)
    response = await api.put(
        f"/sdk/v1/{ios_app.api_key}/installations/gone-device", json={"push_optin": True}
    )
    error(response, 403, 12)


async def test_an_unknown_user_is_done_with_an_error(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    request_id = await request(api, ios_app, "review", "advertising_id", "nobody-here")
    await process(runtime)
    done = await status(api, ios_app, request_id)
    assert (done["status"], done["error"]) == ("done", "user not found")
    assert "data_url" not in done


@pytest.fixture
def callback_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/gdpr-done", received
    finally:
        server.shutdown()


async def test_the_callback_is_called_when_done(
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    callback_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = callback_server
    await a_known_user(api, ios_app, "called-back")
    request_id = await request(api, ios_app, "review", "custom_id", "called-back", callback_url=url)
    await process(runtime)
    assert [(r["request_id"], r["status"]) for r in received] == [(request_id, "done")]


async def test_list_and_bad_input(api: httpx.AsyncClient, ios_app: ClientApp) -> None:
    first = await request(api, ios_app, "review", "custom_id", "a")
    second = await request(api, ios_app, "remove", "custom_id", "b")
    listed = await api.get(f"/1.0/{ios_app.api_key}/gdpr/requests", headers=ios_app.headers())
    assert [r["request_id"] for r in listed.json()] == [second, first]
    bad = await api.post(
        f"/1.0/{ios_app.api_key}/gdpr/request",
        headers=ios_app.headers(),
        json={"request_type": "erase", "id": {"type": "custom_id", "value": "a"}},
    )
    error(bad, 400, 31)
    error(
        await api.get(f"/1.0/{ios_app.api_key}/gdpr/request/nope", headers=ios_app.headers()),
        404,
        20,
    )


# The archive: everything held on one person ------------------------------------------------------


async def a_reviewed_user(
    api: httpx.AsyncClient, app: ClientApp, runtime: Runtime, custom_id: str
) -> tuple[str, dict[str, Any]]:
    await a_known_user(api, app, custom_id)
    request_id = await request(api, app, "review", "custom_id", custom_id)
    await process(runtime)
    done = await status(api, app, request_id)
    assert done["status"] == "done", done
    return request_id, done


async def test_the_archive_is_readable_by_clarion_s_user_only(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    request_id, _ = await a_reviewed_user(api, ios_app, runtime, "private")

    folder = runtime.settings.var_dir / "gdpr"
    assert stat.S_IMODE((folder / f"{request_id}.zip").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


async def test_the_archive_is_served_to_the_app_s_rest_key_and_live_key_only(
    api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp, runtime: Runtime
) -> None:
    request_id, done = await a_reviewed_user(api, ios_app, runtime, "served")
    url = done["data_url"]
    assert url.endswith(f"/1.0/{ios_app.api_key}/gdpr/request/{request_id}/data")

    error(await api.get(url), 401, 10)
    error(await api.get(url, headers={"X-Authorization": "not-a-rest-key"}), 401, 10)
    error(await api.get(url, headers=android_app.headers()), 401, 10)  # another company's key
    through_dev_key = url.replace(ios_app.api_key, ios_app.dev_api_key)
    error(await api.get(through_dev_key, headers=ios_app.headers()), 403, 12)
    own = await api.get(url, headers=ios_app.headers())
    assert own.status_code == 200
    assert "installations.json" in zipfile.ZipFile(io.BytesIO(own.content)).namelist()


async def test_an_expired_archive_is_deleted_and_the_request_says_so(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    request_id, done = await a_reviewed_user(api, ios_app, runtime, "expiring")
    path = runtime.settings.var_dir / "gdpr" / f"{request_id}.zip"
    async with runtime.sessions() as session:
        done_at = await session.scalar(
            select(GdprRequest.done_at).where(GdprRequest.id == request_id)
        )
    assert done_at is not None
    retention = timedelta(days=runtime.settings.gdpr_archive_days)
    assert done["data_expired"] is False
    assert done["data_expiry"] == wire_date(done_at + retention)

    async def expire_at(now: datetime) -> None:
        await delete_expired_archives(
            runtime.sessions,
            var_dir=runtime.settings.var_dir,
            retention=retention,
            clock=lambda: now,
        )

    await expire_at(done_at + retention - timedelta(seconds=1))
    assert path.exists()
    await expire_at(done_at + retention)
    assert not path.exists()

    expired = await status(api, ios_app, request_id)
    assert "data_url" not in expired
    assert (expired["status"], expired["data_expired"], expired["data_expiry"]) == (
        "done",
        True,
        done["data_expiry"],
    )
    listed = await api.get(f"/1.0/{ios_app.api_key}/gdpr/requests", headers=ios_app.headers())
    assert [(r["request_id"], r["data_url"], r["data_expired"]) for r in listed.json()] == [
        (request_id, None, True)
    ]
    gone = await api.get(done["data_url"], headers=ios_app.headers())
    assert "expired on" in error(gone, 404, 20)


async def test_an_archive_past_its_expiry_is_not_served_before_it_is_deleted(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    request_id, done = await a_reviewed_user(api, ios_app, runtime, "late")
    async with transaction(runtime.sessions) as session:
        found = await session.get(GdprRequest, request_id)
        assert found is not None
        assert found.done_at is not None
        found.done_at -= timedelta(days=runtime.settings.gdpr_archive_days)

    assert (await status(api, ios_app, request_id))["data_expired"] is True
    gone = await api.get(done["data_url"], headers=ios_app.headers())
    assert "expired on" in error(gone, 404, 20)
