"""Events enter users into live automations as they are stored (Trigger Events API, SDK), cancel
events cancel their entries, and the entry rules hold; all through real API calls."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.automations.catalogue import AutomationCatalogue
from clarion.automations.models import AutomationEntry
from clarion.automations.service import enter_events
from clarion.campaigns.models import Campaign
from clarion.db import transaction
from clarion.runtime import Runtime
from tests.conftest import ClientApp, new_app
from tests.test_campaigns import created, update
from tests.test_gdpr import process, request, status
from tests.test_sdk_api import register

BASE: dict[str, Any] = {
    "name": "Abandoned cart",
    "live": True,
    "messages": [{"language": "en", "body": "Still thinking about {{ event.attributes.sku }}?"}],
}


def automation(*, live: bool = True, **trigger: Any) -> dict[str, Any]:
    return {**BASE, "live": live, "trigger": {"event": "ue.added_to_cart", **trigger}}


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def track(
    api: httpx.AsyncClient, app: ClientApp, custom_id: str, *events: dict[str, Any]
) -> None:
    response = await api.post(
        f"/1.0/{app.api_key}/events/users/{custom_id}",
        headers=app.headers(),
        json={"events": list(events)},
    )
    assert response.status_code == 202, response.text


async def entries(runtime: Runtime, app: ClientApp) -> list[AutomationEntry]:
    async with runtime.sessions() as session:
        found = await session.scalars(
            select(AutomationEntry)
            .where(AutomationEntry.app_id == app.app_id)
            .order_by(AutomationEntry.id)
        )
        return list(found)


async def change_entry(runtime: Runtime, entry_id: int, **values: Any) -> None:
    """What the dispatcher would have done (sent it), or time passing (entered_at)."""
    async with transaction(runtime.sessions) as session:
        await session.execute(
            sql_update(AutomationEntry).where(AutomationEntry.id == entry_id).values(**values)
        )


async def campaign_id(runtime: Runtime, token: str) -> int:
    async with runtime.sessions() as session:
        found = await session.scalar(select(Campaign.id).where(Campaign.token == token))
    assert found is not None
    return found


async def test_an_event_enters_its_user_after_the_delay(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await created(api, ios_app, automation(delay_seconds=3600))
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    sku = {"sku": "A-113", "price": 9.5}
    await track(
        api,
        ios_app,
        "user-1",
        {"name": "ue.added_to_cart", "time": _iso(at), "label": "web", "attributes": sku},
        {"name": "ue.viewed"},  # no automation listens to it
    )
    (entry,) = await entries(runtime, ios_app)
    assert entry.campaign_id == await campaign_id(runtime, token)
    assert (entry.custom_id, entry.install_id, entry.state) == ("user-1", None, "pending")
    assert entry.due_at == at + timedelta(hours=1)
    assert entry.timed is True
    assert entry.event == {
        "name": "ue.added_to_cart",
        "label": "web",
        "attributes": sku,
        "tags": None,
    }


async def test_a_late_event_is_due_now_and_a_local_time_is_left_to_the_dispatcher(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    await created(api, ios_app, automation(delay_seconds=60, at_local_time="18:30"))
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    await track(api, ios_app, "late", {"name": "ue.added_to_cart", "time": _iso(two_hours_ago)})
    (entry,) = await entries(runtime, ios_app)
    assert entry.due_at == entry.entered_at  # not in the past
    assert entry.timed is False  # the dispatcher moves it to 18:30 in the user's zone


@pytest.mark.parametrize(
    "sent",
    [
        {"name": "ue.added_to_cart", "label": "app", "attributes": {"category": "shoes"}},
        {"name": "ue.added_to_cart", "label": "web", "attributes": {"category": "hats"}},
        {
            "name": "ue.added_to_cart",
            "label": "web",
            "attributes": {"category": "shoes", "gift": 1},
        },
        {"name": "ue.added_to_cart", "label": "web"},
        {"name": "ue.added_to_basket", "label": "web", "attributes": {"category": "shoes"}},
    ],
)
async def test_an_event_that_does_not_meet_the_condition_enters_no_one(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sent: dict[str, Any]
) -> None:
    await created(
        api,
        ios_app,
        automation(label="web", attributes={"category": "shoes", "gift": True}),
    )
    await track(api, ios_app, "nobody", sent)
    assert await entries(runtime, ios_app) == []
    # The same event meeting it does.
    matching = {"category": "shoes", "gift": True, "sku": "x"}
    await track(api, ios_app, "somebody", {**sent, "label": "web", "attributes": matching})
    expected = ["somebody"] if sent["name"] == "ue.added_to_cart" else []
    assert [entry.custom_id for entry in await entries(runtime, ios_app)] == expected


async def test_once_per_days_counts_pending_and_sent_entries_not_cancelled_ones(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    await created(
        api,
        ios_app,
        automation(once_per_days=7, cancel_events=[{"event": "ue.purchased"}]),
    )
    cart = {"name": "ue.added_to_cart"}
    await track(api, ios_app, "u1", cart, cart, cart)  # duplicates within one call
    await track(api, ios_app, "u1", cart)  # and in a later call
    await track(api, ios_app, "u2", cart)
    assert [e.custom_id for e in await entries(runtime, ios_app)] == ["u1", "u2"]
    # A cancelled entry sent nothing: the user may enter again.
    await track(api, ios_app, "u1", {"name": "ue.purchased"}, cart)
    states = [(e.custom_id, e.state) for e in await entries(runtime, ios_app)]
    assert states == [("u1", "cancelled"), ("u2", "pending"), ("u1", "pending")]
    # A sent one counts until N days have passed since it entered.
    sent = (await entries(runtime, ios_app))[1].id
    await change_entry(
        runtime, sent, state="sent", entered_at=datetime.now(UTC) - timedelta(days=6)
    )
    await track(api, ios_app, "u2", cart)
    assert len(await entries(runtime, ios_app)) == 3
    await change_entry(runtime, sent, entered_at=datetime.now(UTC) - timedelta(days=7, minutes=1))
    await track(api, ios_app, "u2", cart)
    assert [e.custom_id for e in await entries(runtime, ios_app)][3:] == ["u2"]


async def test_sdk_events_enter_by_installation_through_both_paths(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    """The fast path (EventIntake, the key known to this process) and the route (the first
    call with a key, here the Dev key, goes past the fast path) both enter the installation."""
    await created(api, ios_app, automation(event="e.Added_To_Cart", delay_seconds=60))
    assert (await register(api, ios_app, "phone-1", custom_id="alice")).status_code == 200
    assert (await register(api, ios_app, "phone-2")).status_code == 200
    url = "/sdk/v1/{}/installations/{}/events"
    body = {"events": [{"name": "added_to_cart", "attributes": {"sku": "A"}}]}
    fast = await api.post(url.format(ios_app.api_key, "phone-1"), json=body)
    routed = await api.post(url.format(ios_app.dev_api_key, "phone-2"), json=body)
    assert (fast.status_code, routed.status_code) == (202, 202)
    found = [(e.install_id, e.custom_id, e.event["name"]) for e in await entries(runtime, ios_app)]
    assert found == [("phone-1", "alice", "added_to_cart"), ("phone-2", None, "added_to_cart")]


async def test_a_cancel_event_cancels_the_pending_entries_it_matches(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    await created(
        api,
        ios_app,
        automation(
            delay_seconds=3600, cancel_events=[{"event": "ue.purchased", "match_attribute": "sku"}]
        ),
    )
    for sku in ("A", "B"):
        await track(api, ios_app, "buyer", {"name": "ue.added_to_cart", "attributes": {"sku": sku}})
    await track(api, ios_app, "other", {"name": "ue.added_to_cart", "attributes": {"sku": "A"}})
    # Another sku, no sku, another user: nothing.
    await track(api, ios_app, "buyer", {"name": "ue.purchased", "attributes": {"sku": "C"}})
    await track(api, ios_app, "buyer", {"name": "ue.purchased"})
    await track(api, ios_app, "someone", {"name": "ue.purchased", "attributes": {"sku": "A"}})
    assert {e.state for e in await entries(runtime, ios_app)} == {"pending"}
    await track(api, ios_app, "buyer", {"name": "ue.purchased", "attributes": {"sku": "A"}})
    found = [
        (e.custom_id, e.event["attributes"]["sku"], e.state, e.reason)
        for e in await entries(runtime, ios_app)
    ]
    assert found == [
        ("buyer", "A", "cancelled", "ue.purchased"),
        ("buyer", "B", "pending", None),
        ("other", "A", "pending", None),
    ]
    assert all(e.finished_at is not None for e in await entries(runtime, ios_app) if e.reason)


async def test_an_sdk_cancel_event_cancels_the_entries_of_its_custom_id(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    """The user bought in the app (an SDK event on an installation that carries their custom
    id) after a server event entered them: same user, cancelled."""
    await created(api, ios_app, automation(cancel_events=[{"event": "e.purchase"}]))
    await register(api, ios_app, "bob-phone", custom_id="bob")
    await track(api, ios_app, "bob", {"name": "ue.added_to_cart"})
    response = await api.post(
        f"/sdk/v1/{ios_app.api_key}/installations/bob-phone/events",
        json={"events": [{"name": "Purchase"}]},
    )
    assert response.status_code == 202
    (entry,) = await entries(runtime, ios_app)
    assert (entry.state, entry.reason) == ("cancelled", "e.purchase")


async def test_within_a_call_events_are_taken_in_time_order(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    """A cart then a purchase cancels the cart's entry; a purchase then a cart does not. The
    same event as trigger and cancel event restarts the delay."""
    await created(api, ios_app, automation(cancel_events=[{"event": "ue.purchased"}]))
    await created(
        api,
        ios_app,
        {
            **automation(event="ue.viewed", cancel_events=[{"event": "ue.viewed"}]),
            "name": "Restarting",
        },
    )
    now = datetime.now(UTC)
    earlier, later = _iso(now - timedelta(minutes=5)), _iso(now - timedelta(minutes=1))
    await track(
        api,
        ios_app,
        "in-order",
        {"name": "ue.purchased", "time": later},
        {"name": "ue.added_to_cart", "time": earlier},
    )
    await track(
        api,
        ios_app,
        "reversed",
        {"name": "ue.added_to_cart", "time": later},
        {"name": "ue.purchased", "time": earlier},
    )
    await track(api, ios_app, "viewer", {"name": "ue.viewed"}, {"name": "ue.viewed"})
    found = [(e.custom_id, e.state, e.reason) for e in await entries(runtime, ios_app)]
    assert found == [
        ("in-order", "cancelled", "ue.purchased"),
        ("reversed", "pending", None),
        ("viewer", "cancelled", "ue.viewed"),
        ("viewer", "pending", None),
    ]


async def test_a_paused_automation_enters_no_one_and_its_pending_entries_are_cancelled(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await created(api, ios_app, automation(delay_seconds=3600))
    await track(api, ios_app, "before", {"name": "ue.added_to_cart"})
    assert (await update(api, ios_app, token, {"live": False})).status_code == 200
    await track(api, ios_app, "during", {"name": "ue.added_to_cart"})
    found = [(e.custom_id, e.state, e.reason) for e in await entries(runtime, ios_app)]
    assert found == [("before", "cancelled", "paused")]
    assert (await update(api, ios_app, token, {"live": True})).status_code == 200
    await track(api, ios_app, "after", {"name": "ue.added_to_cart"})
    assert [e.custom_id for e in await entries(runtime, ios_app)] == ["before", "after"]
    deleted = await api.post(
        f"/1.1/{ios_app.api_key}/campaigns/delete/{token}", headers=ios_app.headers()
    )
    assert deleted.status_code == 200
    await track(api, ios_app, "gone", {"name": "ue.added_to_cart"})
    found = [(e.custom_id, e.state) for e in await entries(runtime, ios_app)]
    assert found == [("before", "cancelled"), ("after", "cancelled")]


@pytest.fixture
def statements(runtime: Runtime) -> Iterator[list[str]]:
    """The SQL statements the engine runs meanwhile (bulk inserts go through the driver)."""
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    engine = runtime.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


async def test_a_bulk_call_of_1000_events_is_a_handful_of_statements(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, statements: list[str]
) -> None:
    await created(api, ios_app, automation(once_per_days=1, attributes={"even": True}))
    await created(
        api,
        ios_app,
        {
            **automation(event="ue.purchased", cancel_events=[{"event": "ue.refunded"}]),
            "name": "Thanks",
        },
    )
    # 500 users enter the first (their even event), 250 the second; each refund cancels one.
    body = [
        {
            "id": f"user-{n}",
            "events": [
                {"name": "ue.added_to_cart", "attributes": {"even": n % 2 == 0}},
                {"name": "ue.purchased" if n % 4 == 0 else "ue.viewed"},
            ],
        }
        for n in range(500)
    ]
    response = await api.post(
        f"/1.0/{ios_app.api_key}/events/users", headers=ios_app.headers(), json=body
    )
    assert response.status_code == 202, response.text
    statements.clear()
    refunds = [
        {"id": f"user-{n}", "events": [{"name": "ue.refunded"}, {"name": "ue.added_to_cart"}]}
        for n in range(0, 500, 8)
    ]
    refunds += [{"id": f"user-{n}", "events": [{"name": "ue.viewed"}]} for n in range(1, 875)]
    response = await api.post(
        f"/1.0/{ios_app.api_key}/events/users", headers=ios_app.headers(), json=refunds
    )
    assert response.status_code == 202, response.text
    found = await entries(runtime, ios_app)
    assert sum(e.event["name"] == "ue.added_to_cart" for e in found) == 250
    thanks = [e for e in found if e.event["name"] == "ue.purchased"]
    assert len(thanks) == 125
    assert sum(e.state == "cancelled" for e in thanks) == 63  # users 0, 8, ..., 496
    # Authentication, the GDPR check, the once_per_days and cancel reads, one update: not one
    # statement per event.
    assert len(statements) <= 12, statements


async def test_another_apps_automation_is_never_entered(
    api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp, runtime: Runtime
) -> None:
    await created(api, ios_app, automation(cancel_events=[{"event": "ue.purchased"}]))
    await created(api, android_app, automation(cancel_events=[{"event": "ue.purchased"}]))
    await track(api, ios_app, "shared-id", {"name": "ue.added_to_cart"})
    await track(api, android_app, "shared-id", {"name": "ue.purchased"})
    assert [e.state for e in await entries(runtime, ios_app)] == ["pending"]
    assert await entries(runtime, android_app) == []


async def test_the_catalogue_sees_a_change_at_once_in_its_process(
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read before the automation exists, the app's catalogue would be kept an hour: creating
    the automation in this process drops it."""
    monkeypatch.setattr(runtime.automations, "refresh_seconds", 3600.0)
    await track(api, ios_app, "early", {"name": "ue.added_to_cart"})
    await created(api, ios_app, automation())
    await track(api, ios_app, "next", {"name": "ue.added_to_cart"})
    assert [e.custom_id for e in await entries(runtime, ios_app)] == ["next"]


async def test_another_process_sees_a_change_once_its_check_is_due(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    """Another process's catalogue (here a second one, with its own clock) keeps what it read
    until its check is due, then reads the change (made here in SQL, as another process's
    change would reach this one: not through this process's forget)."""
    clock = [0.0]
    other = AutomationCatalogue(refresh_seconds=1.0, monotonic=lambda: clock[0])
    cart = [
        {
            "app_id": ios_app.app_id,
            "name": "ue.added_to_cart",
            "custom_id": "elsewhere",
            "install_id": None,
            "label": None,
            "attributes": None,
            "tags": None,
            "occurred_at": datetime.now(UTC),
        }
    ]

    async def enter() -> int:
        async with transaction(runtime.sessions) as session:
            done = await enter_events(
                session, other, app_id=ios_app.app_id, events=cart, now=datetime.now(UTC)
            )
        return done.entered

    async def set_state(state: str) -> None:
        async with transaction(runtime.sessions) as session:
            await session.execute(
                sql_update(Campaign)
                .where(Campaign.id == automation_id)
                .values(state=state, updated_at=datetime.now(UTC))
            )

    automation_id = await campaign_id(runtime, await created(api, ios_app, automation(live=False)))
    assert await enter() == 0
    await set_state("active")
    clock[0] = 0.9
    assert await enter() == 0  # within the window: not seen yet
    clock[0] = 1.0
    assert await enter() == 1
    await set_state("paused")
    clock[0] = 1.5
    assert await enter() == 1  # the window again (the dispatcher cancels such entries)
    clock[0] = 2.0
    assert await enter() == 0


async def test_a_gdpr_review_lists_the_users_entries_and_a_removal_deletes_them(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    await created(api, ios_app, automation(cancel_events=[{"event": "ue.purchased"}]))
    await register(api, ios_app, "carol-phone", custom_id="carol")
    await created(api, ios_app, {**automation(event="e.opened_cart"), "name": "In the app"})
    await track(api, ios_app, "carol", {"name": "ue.added_to_cart"}, {"name": "ue.purchased"})
    await track(api, ios_app, "carol", {"name": "ue.added_to_cart"})
    await track(api, ios_app, "dave", {"name": "ue.added_to_cart"})
    response = await api.post(
        f"/sdk/v1/{ios_app.api_key}/installations/carol-phone/events",
        json={"events": [{"name": "opened_cart"}]},
    )
    assert response.status_code == 202
    assert len(await entries(runtime, ios_app)) == 4
    reviewed = await request(api, ios_app, "review", "custom_id", "carol")
    await process(runtime)
    archive = await api.get(
        (await status(api, ios_app, reviewed))["data_url"], headers=ios_app.headers()
    )
    held = json.loads(zipfile.ZipFile(io.BytesIO(archive.content)).read("automation_entries.json"))
    assert sorted(e["state"] for e in held) == ["cancelled", "pending", "pending"]
    await request(api, ios_app, "remove", "custom_id", "carol")
    await process(runtime)
    assert [e.custom_id for e in await entries(runtime, ios_app)] == ["dave"]


async def test_events_of_an_app_without_automations_cost_one_check(
    api: httpx.AsyncClient, runtime: Runtime, statements: list[str]
) -> None:
    app = await new_app(runtime, None, "ios", configure=False)
    await track(api, app, "someone", {"name": "ue.added_to_cart"})
    statements.clear()
    await track(api, app, "someone", {"name": "ue.added_to_cart"})
    assert not any("automation_entries" in sql for sql in statements)


async def _finished_or_waiting(runtime: Runtime, call: asyncio.Task[None]) -> None:
    """Until `call` has finished or waits for a lock of this database (PostgreSQL): then the
    transaction the test holds may commit. Each check is a query, so `call` runs meanwhile."""
    waiting = text(
        "SELECT count(*) FROM pg_locks WHERE NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    deadline = time.monotonic() + 30
    async with runtime.engine.connect() as connection:
        while not call.done() and not await connection.scalar(waiting):
            assert time.monotonic() < deadline, "the second call neither ended nor waited"


async def test_once_per_days_holds_for_two_concurrent_calls_for_one_user(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, backend: str
) -> None:
    """The second call comes while the first has entered the user and not committed: it waits
    for that commit and then counts the entry (PostgreSQL: the users' locks; SQLite: one
    connection, so one transaction at a time). Without the lock both read no entry, both enter."""
    await created(api, ios_app, automation(once_per_days=7))

    async def call(session: AsyncSession) -> None:
        now = datetime.now(UTC)
        cart = {
            "app_id": ios_app.app_id,
            "name": "ue.added_to_cart",
            "custom_id": "twice",
            "install_id": None,
            "label": None,
            "attributes": None,
            "tags": None,
            "occurred_at": now,
        }
        await enter_events(
            session, runtime.automations, app_id=ios_app.app_id, events=[cart], now=now
        )

    async def second() -> None:
        async with transaction(runtime.sessions) as session:
            await call(session)

    async with transaction(runtime.sessions) as session:
        await call(session)
        late = asyncio.create_task(second())
        if backend == "postgres":
            # A second connection on purpose, from a task of its own: the pool refuses one to
            # the task that holds `session` (clarion.db, decision 0033).
            await asyncio.create_task(_finished_or_waiting(runtime, late))
    await late
    assert [e.custom_id for e in await entries(runtime, ios_app)] == ["twice"]
