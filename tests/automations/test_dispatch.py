"""The automation dispatcher, end to end: due entries -> outbox -> workers -> APNs simulator.

Automations are created through the Campaigns API and devices through the SDK API. Entries are
written as rows (events enter users in clarion.automations.service, tested on their own);
each test drives its own dispatcher with a clock it controls (the session's background one is
idle, see conftest), and the session's workers deliver.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text, update

from clarion.apps.models import App
from clarion.automations import service as automations_service
from clarion.automations.models import AutomationEntry
from clarion.automations.tasks import AutomationDispatcher
from clarion.campaigns.models import Campaign
from clarion.capping.models import CappingReceipt
from clarion.config import QueueBackend, Settings
from clarion.db import transaction
from clarion.delivery.content import personalised_fields
from clarion.delivery.models import BatchStatus, DeliveryBatch, Send
from clarion.queue import JobQueue
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from tests.conftest import ClientApp, new_app
from tests.support.clock import Clock
from tests.support.waiting import eventually, lock_waited
from tests.test_campaign_runs import add_installs
from tests.test_campaigns import created
from tests.test_campaigns import update as update_campaign
from tests.test_delivery import register
from tests.test_recovery import api_only, pg_settings, start_worker  # noqa: F401 (fixtures)

CART = {
    "name": "ue.added_to_cart",
    "label": "cart",
    "attributes": {"sku": "A-113", "price": 12.5},
    "tags": [],
}
REMINDER: dict[str, Any] = {
    "name": "Abandoned cart",
    "live": True,
    "trigger": {"event": "ue.added_to_cart"},
    "messages": [
        {
            "language": "en",
            "title": "Your {{ event.label }}",
            "body": "Still thinking about {{ event.attributes.sku }}?",
        }
    ],
}


def dispatcher(
    runtime: Runtime,
    clock: Callable[[], datetime],
    *,
    queue: JobQueue | None = None,
    **settings: Any,
) -> AutomationDispatcher:
    chosen: Settings = runtime.settings.model_copy(update=settings)
    return AutomationDispatcher(runtime.sessions, queue or runtime.queue, chosen, clock=clock)


async def automation(
    api: httpx.AsyncClient, app: ClientApp, *, key: str | None = None, **changes: Any
) -> str:
    trigger = {**REMINDER["trigger"], **changes.pop("trigger", {})}
    body = {**REMINDER, **changes, "trigger": trigger}
    if key is None:
        return await created(api, app, body)
    response = await api.post(f"/1.1/{key}/campaigns/create", headers=app.headers(), json=body)
    assert response.status_code == 201, response.text
    token: str = response.json()["campaign_token"]
    return token


async def device(api: httpx.AsyncClient, app: ClientApp, custom_id: str, **fields: Any) -> str:
    """An opted-in installation of `custom_id`, registered through the SDK API; its token."""
    token = secrets.token_hex(32)
    await register(
        api,
        app,
        f"install-{secrets.token_hex(6)}",
        push_token=token,
        custom_id=custom_id,
        language="en",
        **fields,
    )
    return token


async def enter(
    runtime: Runtime,
    app: ClientApp,
    token: str,
    *,
    custom_id: str | None = None,
    install_id: str | None = None,
    due_at: datetime | None = None,
    event: dict[str, Any] | None = None,
) -> int:
    """An entry, as the trigger event would write it."""
    now = datetime.now(UTC)
    async with transaction(runtime.sessions) as session:
        campaign_id = await session.scalar(select(Campaign.id).where(Campaign.token == token))
        assert campaign_id is not None
        entry = AutomationEntry(
            app_id=app.app_id,
            campaign_id=campaign_id,
            custom_id=custom_id,
            install_id=install_id,
            event=event or CART,
            entered_at=now,
            due_at=due_at or now,
        )
        session.add(entry)
        await session.flush()
        return entry.id


async def entry_of(runtime: Runtime, entry_id: int) -> AutomationEntry:
    async with runtime.sessions() as session:
        entry = await session.get(AutomationEntry, entry_id)
        assert entry is not None
        return entry


async def sends_of(runtime: Runtime, token: str) -> list[Send]:
    async with runtime.sessions() as session:
        return list(
            await session.scalars(
                select(Send).where(Send.campaign_token == token).order_by(Send.id)
            )
        )


async def batches_of(runtime: Runtime, token: str) -> list[DeliveryBatch]:
    async with runtime.sessions() as session:
        return list(
            await session.scalars(
                select(DeliveryBatch)
                .join(Send, Send.id == DeliveryBatch.send_id)
                .where(Send.campaign_token == token)
                .order_by(DeliveryBatch.id)
            )
        )


async def wait_delivered(runtime: Runtime, token: str) -> None:
    async def delivered() -> bool:
        return all(b.status == BatchStatus.DONE.value for b in await batches_of(runtime, token))

    await eventually(delivered, what=f"automation {token} delivered")


async def sent_at(
    at: datetime,
    clock: Clock,
    ticking: AutomationDispatcher,
    runtime: Runtime,
    token: str,
    entry_id: int,
) -> None:
    """The clock moved to `at`, the entry is sent and its push delivered."""
    clock.now = at
    await ticking.tick()
    await wait_delivered(runtime, token)
    assert (await entry_of(runtime, entry_id)).state == "sent"


def pushes(sim_control: httpx.Client, token: str) -> list[dict[str, Any]]:
    """What the simulated APNs accepted for a device token."""
    got = sim_control.get(f"/_sim/apns/tokens/{token}")
    if got.status_code == 404:
        return []
    messages: list[dict[str, Any]] = got.json()["messages"]
    assert got.json()["count"] == len(messages)
    return messages


async def set_caps(runtime: Runtime, app: ClientApp, caps: dict[str, Any]) -> None:
    async with transaction(runtime.sessions) as session:
        await session.execute(update(App).where(App.id == app.app_id).values(push_caps=caps))


def now_clock() -> datetime:
    """The time as it goes (sending due entries now); tests of time itself use a Clock."""
    return datetime.now(UTC)


# -- sending ---------------------------------------------------------------------------------


async def test_a_due_entry_reaches_the_device_with_its_event_rendered(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app)
    alice = await device(api, ios_app, "alice")
    entry_id = await enter(runtime, ios_app, token, custom_id="alice")

    assert await dispatcher(runtime, now_clock).tick() >= 1
    await wait_delivered(runtime, token)

    [push] = pushes(sim_control, alice)
    assert push["payload"]["aps"]["alert"] == {
        "title": "Your cart",
        "body": "Still thinking about A-113?",
    }
    [send] = await sends_of(runtime, token)
    assert send.kind == "automation"
    assert send.content["personalised"] is True
    assert push["payload"]["com.batch"]["i"] == send.token
    entry = await entry_of(runtime, entry_id)
    assert (entry.state, entry.send_id, entry.reason) == ("sent", send.id, None)
    assert entry.finished_at is not None


async def test_every_installation_of_the_user_gets_its_push_and_sdk_events_their_own(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app, trigger={"event": "e.viewed"})
    phone = await device(api, ios_app, "bob")
    tablet = await device(api, ios_app, "bob")
    other_id = f"install-{secrets.token_hex(6)}"
    other = secrets.token_hex(32)
    await register(api, ios_app, other_id, push_token=other, custom_id="carol")
    server = await enter(runtime, ios_app, token, custom_id="bob")
    sdk = await enter(
        runtime,
        ios_app,
        token,
        install_id=other_id,
        custom_id="carol",
        event={**CART, "name": "viewed", "attributes": {"sku": "B-7"}},
    )

    await dispatcher(runtime, now_clock).tick()
    await wait_delivered(runtime, token)

    assert len(pushes(sim_control, phone)) == len(pushes(sim_control, tablet)) == 1
    [push] = pushes(sim_control, other)
    assert push["payload"]["aps"]["alert"]["body"] == "Still thinking about B-7?"
    assert {(await entry_of(runtime, e)).state for e in (server, sdk)} == {"sent"}
    # One send for the pass, its batch carrying each installation's event.
    assert len(await sends_of(runtime, token)) == 1
    [batch] = await batches_of(runtime, token)
    assert len(batch.recipients["installations"]) == 3
    assert len(batch.recipients["events"]) == 3


async def test_a_retried_push_renders_the_event_again(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app)
    alice = await device(api, ios_app, "alice")
    sim_control.post(f"/_sim/apns/tokens/{alice}/fail", json={"status": 503, "count": 1})
    await enter(runtime, ios_app, token, custom_id="alice")

    await dispatcher(runtime, now_clock).tick()
    await wait_delivered(runtime, token)

    [push] = pushes(sim_control, alice)
    assert push["payload"]["aps"]["alert"]["body"] == "Still thinking about A-113?"
    retry = [b for b in await batches_of(runtime, token) if b.attempt == 1]
    assert retry
    assert list(retry[0].recipients["events"].values()) == [CART]


async def test_pushes_with_their_own_texts_go_out_together(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    """Each user's push renders its own event, so each is a payload of its own: a batch's
    pushes are sent together, not one round trip after the other."""
    token = await automation(api, ios_app)
    users = [f"user-{n}" for n in range(12)]
    tokens = [await device(api, ios_app, user) for user in users]
    for n, user in enumerate(users):
        await enter(
            runtime, ios_app, token, custom_id=user, event={**CART, "attributes": {"sku": f"S-{n}"}}
        )
    sim_control.put("/_sim/apns/faults", json={"rates": {}, "delay_ms": 500})
    try:
        started = time.monotonic()
        await dispatcher(runtime, now_clock).tick()
        await wait_delivered(runtime, token)
        elapsed = time.monotonic() - started
    finally:
        sim_control.put("/_sim/apns/faults", json={"rates": {}, "delay_ms": 0})
    # One after the other: 12 x 0.5 s at least.
    assert elapsed < 3.0
    bodies = {pushes(sim_control, t)[0]["payload"]["aps"]["alert"]["body"] for t in tokens}
    assert bodies == {f"Still thinking about S-{n}?" for n in range(12)}


async def test_a_delayed_entry_is_not_sent_before_it_is_due(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app, trigger={"delay_seconds": 3600})
    alice = await device(api, ios_app, "alice")
    now = datetime.now(UTC)
    due = now + timedelta(hours=1)
    entry_id = await enter(runtime, ios_app, token, custom_id="alice", due_at=due)
    clock = Clock(now)
    ticking = dispatcher(runtime, clock)

    await ticking.tick()
    clock.now = now + timedelta(minutes=59, seconds=59)
    await ticking.tick()
    assert (await entry_of(runtime, entry_id)).state == "pending"
    assert await sends_of(runtime, token) == []

    await sent_at(due, clock, ticking, runtime, token, entry_id)
    assert len(pushes(sim_control, alice)) == 1


async def test_versions_are_stable_per_user(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await automation(
        api,
        ios_app,
        messages=[
            {"language": "en", "version": "a", "body": "A"},
            {"language": "en", "version": "b", "body": "B"},
        ],
    )
    users = [f"user-{n}" for n in range(40)]
    for user in users:
        await device(api, ios_app, user)
    ticking = dispatcher(runtime, now_clock)
    versions: list[dict[str, str | None]] = []
    for _ in range(2):
        entries = {user: await enter(runtime, ios_app, token, custom_id=user) for user in users}
        await ticking.tick()
        by_send = {send.id: send.version for send in await sends_of(runtime, token)}
        sent = {user: (await entry_of(runtime, e)).send_id or 0 for user, e in entries.items()}
        versions.append({user: by_send[send_id] for user, send_id in sent.items()})
    assert versions[0] == versions[1]
    assert set(versions[0].values()) == {"a", "b"}
    await wait_delivered(runtime, token)


# -- skipped, cancelled, moved -----------------------------------------------------------------


async def test_an_unknown_user_is_skipped_as_unreachable(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    token = await automation(api, ios_app)
    opted_out = secrets.token_hex(32)
    await register(
        api, ios_app, "opted-out", push_token=opted_out, custom_id="dan", push_optin=False
    )
    nobody = await enter(runtime, ios_app, token, custom_id="nobody")
    dan = await enter(runtime, ios_app, token, custom_id="dan")

    await dispatcher(runtime, now_clock).tick()

    for entry_id in (nobody, dan):
        entry = await entry_of(runtime, entry_id)
        assert (entry.state, entry.reason) == ("skipped", "unreachable")
    assert await sends_of(runtime, token) == []


async def test_a_user_out_of_the_audience_at_send_time_is_skipped(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app, targeting={"query": {"c.plan": "premium"}})
    premium = await device(api, ios_app, "premium-user")
    free = await device(api, ios_app, "free-user")
    for user, plan in (("premium-user", "premium"), ("free-user", "free")):
        answer = await api.post(
            f"/1.0/{ios_app.api_key}/data/users/{user}",
            headers=ios_app.headers(),
            json={"values": {"u.plan": plan}},
        )
        assert answer.status_code in (200, 202), answer.text
    kept = await enter(runtime, ios_app, token, custom_id="premium-user")
    dropped = await enter(runtime, ios_app, token, custom_id="free-user")

    await dispatcher(runtime, now_clock).tick()
    await wait_delivered(runtime, token)

    assert (await entry_of(runtime, kept)).state == "sent"
    entry = await entry_of(runtime, dropped)
    assert (entry.state, entry.reason) == ("skipped", "audience")
    assert len(pushes(sim_control, premium)) == 1
    assert pushes(sim_control, free) == []


async def test_a_paused_or_deleted_automation_cancels_its_due_entries(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    paused = await automation(api, ios_app)
    deleted = await automation(api, ios_app)
    await device(api, ios_app, "alice")
    assert (await update_campaign(api, ios_app, paused, {"live": False})).status_code == 200
    answer = await api.post(
        f"/1.1/{ios_app.api_key}/campaigns/delete/{deleted}", headers=ios_app.headers()
    )
    assert answer.status_code == 200
    # Entries written as the automation stopped (its event stored in the same instant).
    entries = [
        await enter(runtime, ios_app, token, custom_id="alice") for token in (paused, deleted)
    ]

    await dispatcher(runtime, now_clock).tick()

    for entry_id in entries:
        entry = await entry_of(runtime, entry_id)
        assert (entry.state, entry.reason) == ("cancelled", "paused")
    assert await sends_of(runtime, paused) == await sends_of(runtime, deleted) == []


async def test_at_local_time_moves_the_entry_to_the_users_clock(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app, trigger={"at_local_time": "09:00"})
    tokyo = await device(api, ios_app, "tokyo-user", timezone="Asia/Tokyo")
    # Due tomorrow at 12:00 UTC (21:00 in Tokyo): sent at the next 09:00 there, 00:00 UTC.
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(
        hour=12, minute=0, second=0, microsecond=0
    )
    entry_id = await enter(runtime, ios_app, token, custom_id="tokyo-user", due_at=tomorrow)
    clock = Clock(tomorrow)
    ticking = dispatcher(runtime, clock)

    await ticking.tick()
    entry = await entry_of(runtime, entry_id)
    local_nine = (tomorrow + timedelta(days=1)).replace(hour=0)
    assert (entry.state, entry.timed, entry.due_at) == ("pending", True, local_nine)

    clock.now = local_nine - timedelta(seconds=1)
    await ticking.tick()
    assert (await entry_of(runtime, entry_id)).state == "pending"
    await sent_at(local_nine, clock, ticking, runtime, token, entry_id)
    assert len(pushes(sim_control, tokyo)) == 1


async def test_quiet_hours_hold_the_push_until_they_end(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(
        api, ios_app, trigger={"quiet_hours": {"start": "22:00", "end": "08:00"}}
    )
    paris = await device(api, ios_app, "paris-user", timezone="Europe/Paris")
    # 23:30 in Paris tomorrow (whatever its offset then).
    day = (datetime.now(UTC) + timedelta(days=1)).date()
    zone = ZoneInfo("Europe/Paris")
    late = datetime(day.year, day.month, day.day, 23, 30, tzinfo=zone).astimezone(UTC)
    morning = datetime(day.year, day.month, day.day, 8, 0, tzinfo=zone) + timedelta(days=1)
    entry_id = await enter(runtime, ios_app, token, custom_id="paris-user", due_at=late)
    clock = Clock(late)
    ticking = dispatcher(runtime, clock)

    await ticking.tick()
    entry = await entry_of(runtime, entry_id)
    assert (entry.state, entry.due_at) == ("pending", morning.astimezone(UTC))
    await sent_at(morning.astimezone(UTC), clock, ticking, runtime, token, entry_id)
    assert len(pushes(sim_control, paris)) == 1


async def test_a_cap_reached_skips_the_entry_and_receipts_count_the_pushes(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    await set_caps(
        runtime,
        ios_app,
        {"automations": {"max": 2, "hours": 24}, "labels": {"promo": {"max": 1, "hours": 24}}},
    )
    plain = await automation(api, ios_app)
    promo = await automation(api, ios_app, labels=["promo"])
    alice = await device(api, ios_app, "alice")
    ticking = dispatcher(runtime, now_clock)

    # Two entries due in the same pass for the same installation: the second waits for the
    # next pass, where the receipt of the first counts.
    first = await enter(runtime, ios_app, promo, custom_id="alice")
    second = await enter(runtime, ios_app, promo, custom_id="alice")
    await ticking.tick()
    assert (await entry_of(runtime, first)).state == "sent"
    entry = await entry_of(runtime, second)
    assert (entry.state, entry.reason) == ("skipped", "cap:label:promo")

    third = await enter(runtime, ios_app, plain, custom_id="alice")
    await ticking.tick()
    assert (await entry_of(runtime, third)).state == "sent"
    fourth = await enter(runtime, ios_app, plain, custom_id="alice")
    await ticking.tick()
    entry = await entry_of(runtime, fourth)
    assert (entry.state, entry.reason) == ("skipped", "cap:automations")

    await wait_delivered(runtime, plain)
    await wait_delivered(runtime, promo)
    assert len(pushes(sim_control, alice)) == 2
    async with runtime.sessions() as session:
        keys = Counter(
            await session.scalars(
                select(CappingReceipt.key).where(CappingReceipt.app_id == ios_app.app_id)
            )
        )
    assert keys == {"automations": 2, "label:promo": 1}


async def test_a_dev_key_automation_reaches_debug_installations_without_server_events(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app, key=ios_app.dev_api_key)
    live = await device(api, ios_app, "erin")
    debug = secrets.token_hex(32)
    await register(
        api, ios_app, "debug-erin", key=ios_app.dev_api_key, push_token=debug, custom_id="erin"
    )
    await enter(runtime, ios_app, token, custom_id="erin")

    await dispatcher(runtime, now_clock).tick()
    await wait_delivered(runtime, token)

    assert pushes(sim_control, live) == []
    [push] = pushes(sim_control, debug)
    # The Live key's event on a custom id a debug build claims renders as the defaults.
    assert push["payload"]["aps"]["alert"]["body"] == "Still thinking about ?"


# -- at most once --------------------------------------------------------------------------


async def test_two_dispatchers_claiming_at_once_send_each_entry_once(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    if runtime.settings.is_sqlite:
        pytest.skip("SQLite runs one process, hence one dispatcher")
    token = await automation(api, ios_app)
    installs = await add_installs(runtime, ios_app, 120)
    async with transaction(runtime.sessions) as session:
        await session.execute(
            update(Installation)
            .where(Installation.id.in_([i.id for i in installs]))
            .values(custom_id=func.concat("many-", Installation.id))
        )
    entries = [
        await enter(runtime, ios_app, token, custom_id=f"many-{install.id}") for install in installs
    ]
    clock = now_clock
    first, second = (dispatcher(runtime, clock, automation_pass_entries=10) for _ in range(2))

    claimed = await asyncio.gather(first.tick(), second.tick())

    assert sum(claimed) >= len(entries)
    assert all(claimed)  # both took part
    assert {(await entry_of(runtime, e)).state for e in entries} == {"sent"}
    await wait_delivered(runtime, token)
    reached = Counter(
        pk
        for batch in await batches_of(runtime, token)
        if batch.attempt == 0
        for pk in batch.recipients["installations"]
    )
    assert set(reached.values()) == {1}
    assert len(reached) == len(installs)
    for install in installs:
        assert install.push_token is not None
        assert len(pushes(sim_control, install.push_token)) == 1


async def test_two_dispatchers_never_pass_a_cap_together(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    if runtime.settings.is_sqlite:
        pytest.skip("SQLite runs one process, hence one dispatcher")
    await set_caps(runtime, ios_app, {"automations": {"max": 1, "hours": 24}})
    tokens = [await automation(api, ios_app), await automation(api, ios_app)]
    installs = await add_installs(runtime, ios_app, 30)
    async with transaction(runtime.sessions) as session:
        await session.execute(
            update(Installation)
            .where(Installation.id.in_([i.id for i in installs]))
            .values(custom_id=func.concat("capped-", Installation.id))
        )
    # Each user's two entries (one per automation) are next to each other in due order, and
    # each dispatcher claims one entry a pass: they decide the same user's caps together.
    start = datetime.now(UTC) - timedelta(minutes=1)
    entries: dict[int, list[int]] = {}
    for n, install in enumerate(installs):
        entries[install.id] = [
            await enter(
                runtime,
                ios_app,
                token,
                custom_id=f"capped-{install.id}",
                due_at=start + timedelta(milliseconds=10 * n + index),
            )
            for index, token in enumerate(tokens)
        ]
    first, second = (dispatcher(runtime, now_clock, automation_pass_entries=1) for _ in range(2))

    await asyncio.gather(first.tick(), second.tick())
    await first.tick()  # what waited for the other's decision

    for install in installs:
        found = [await entry_of(runtime, e) for e in entries[install.id]]
        states = sorted((entry.state, entry.reason) for entry in found)
        assert states == [("sent", None), ("skipped", "cap:automations")]
    async with runtime.sessions() as session:
        receipts = Counter(
            await session.scalars(
                select(CappingReceipt.installation_id).where(
                    CappingReceipt.app_id == ios_app.app_id
                )
            )
        )
    assert receipts == {install.id: 1 for install in installs}
    for token in tokens:
        await wait_delivered(runtime, token)


async def test_a_pass_that_fails_before_its_commit_leaves_the_entry_pending(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app)
    alice = await device(api, ios_app, "alice")
    entry_id = await enter(runtime, ios_app, token, custom_id="alice")
    postgres = not runtime.settings.is_sqlite
    # The database refuses the pass's push (a trigger on sends), after the entry was claimed.
    async with transaction(runtime.sessions) as session:
        if postgres:
            await session.execute(
                text(
                    "CREATE FUNCTION refuse_sends() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN RAISE EXCEPTION 'injected'; END $$"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER refuse_sends BEFORE INSERT ON sends"
                    " FOR EACH ROW EXECUTE FUNCTION refuse_sends()"
                )
            )
        else:
            await session.execute(
                text(
                    "CREATE TRIGGER refuse_sends BEFORE INSERT ON sends"
                    " BEGIN SELECT RAISE(ABORT, 'injected'); END"
                )
            )
    ticking = dispatcher(runtime, now_clock)
    try:
        with pytest.raises(Exception, match="injected"):
            await ticking.tick()
        assert (await entry_of(runtime, entry_id)).state == "pending"
        assert await sends_of(runtime, token) == []
    finally:
        async with transaction(runtime.sessions) as session:
            on = " ON sends" if postgres else ""
            await session.execute(text(f"DROP TRIGGER refuse_sends{on}"))
            if postgres:
                await session.execute(text("DROP FUNCTION refuse_sends()"))

    await ticking.tick()
    await wait_delivered(runtime, token)
    assert (await entry_of(runtime, entry_id)).state == "sent"
    assert len(pushes(sim_control, alice)) == 1


async def test_a_crash_between_commit_and_enqueue_is_made_up_by_the_outbox_sweep(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app)
    alice = await device(api, ios_app, "alice")
    entry_id = await enter(runtime, ios_app, token, custom_id="alice")
    lost = JobQueue(QueueBackend.MEMORY, "")  # jobs handed to it are never worked
    await lost.start()
    try:
        await dispatcher(runtime, now_clock, queue=lost).tick()
    finally:
        await lost.aclose()
    assert (await entry_of(runtime, entry_id)).state == "sent"
    [batch] = await batches_of(runtime, token)
    assert batch.status == BatchStatus.PENDING.value

    assert runtime.deliverer is not None
    await runtime.deliverer.sweep_outbox(grace_seconds=0)
    await wait_delivered(runtime, token)
    assert len(pushes(sim_control, alice)) == 1


@pytest.mark.postgres
async def test_a_worker_killed_mid_pass_loses_nothing_and_sends_once(
    api_only: FastAPI,  # noqa: F811 (test_recovery's fixture, on a database of its own)
    sim_control: httpx.Client,
) -> None:
    """`clarion worker` killed with SIGKILL while its pass waits to write the push (sends
    locked by this test): the entry stays pending, and the next worker sends it once."""
    runtime: Runtime = api_only.state.runtime
    app = await new_app(runtime, sim_control, "ios")
    transport = httpx.ASGITransport(app=api_only)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as api:
        token = await automation(api, app)
        alice = await device(api, app, "alice")
    entry_id = await enter(runtime, app, token, custom_id="alice")
    # The workers' dispatchers poll as they do by default (conftest makes them idle).
    settings = runtime.settings.model_copy(update={"automation_poll_seconds": 0.2})
    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")

    with psycopg.connect(url) as blocker:
        blocker.execute("LOCK TABLE sends IN EXCLUSIVE MODE")
        first = start_worker(settings)
        try:
            await lock_waited(
                settings.database_url,
                statement="INSERT INTO sends",
                what="the worker's pass waiting to write to the outbox",
            )
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
        blocker.rollback()  # the lock goes; the dead worker's transaction never commits

    assert (await entry_of(runtime, entry_id)).state == "pending"
    second = start_worker(settings)
    try:

        async def sent() -> bool:
            return bool(pushes(sim_control, alice))

        await eventually(sent, what="the second worker sending the entry", timeout=30)
        await wait_delivered(runtime, token)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=15)
    assert len(pushes(sim_control, alice)) == 1
    assert len(await sends_of(runtime, token)) == 1
    assert (await entry_of(runtime, entry_id)).state == "sent"


# -- personalisation ------------------------------------------------------------------------


def test_templates_read_the_trigger_event_beside_the_attributes() -> None:
    content = {
        "messages": {"en": {"title": "{{ c.firstname }}", "body": "{{ event.attributes.sku }}"}},
        "deeplink": "app://item/{{ event.attributes.sku | urlencode }}?from={{ event.label }}",
    }
    assert personalised_fields(content, "en", {"firstname": "Ann"}, CART) == (
        "Ann",
        "A-113",
        "app://item/A-113?from=cart",
    )
    # No event (a campaign's push): the defaults.
    assert personalised_fields(content, "en", {}) == ("", "", "app://item/?from=")


async def test_an_automation_accepts_event_templates(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    await automation(
        api,
        ios_app,
        messages=[
            {
                "language": "en",
                "body": "{{ event.attributes.sku | default('your cart') }}"
                " {{ event.tags | join(',') }}",
            }
        ],
    )


# -- from the Trigger Events API -----------------------------------------------------------


@pytest.mark.skipif(
    not hasattr(automations_service, "enter_events"),
    reason="needs auto-enter (events entering users: clarion.automations.service.enter_events)",
)
async def test_a_trigger_event_reaches_the_device(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, sim_control: httpx.Client
) -> None:
    token = await automation(api, ios_app)
    alice = await device(api, ios_app, "alice")
    answer = await api.post(
        f"/1.0/{ios_app.api_key}/events/users/alice",
        headers=ios_app.headers(),
        json={
            "events": [{"name": "ue.added_to_cart", "label": "cart", "attributes": {"sku": "Z-9"}}]
        },
    )
    assert answer.status_code == 202, answer.text
    ticking = dispatcher(runtime, lambda: datetime.now(UTC))

    async def pushed() -> bool:
        await ticking.tick()
        return bool(pushes(sim_control, alice))

    await eventually(pushed, what="a push for the trigger event", timeout=10)
    [push] = pushes(sim_control, alice)
    assert push["payload"]["aps"]["alert"] == {
        "title": "Your cart",
        "body": "Still thinking about Z-9?",
    }
    await wait_delivered(runtime, token)
