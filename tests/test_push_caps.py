"""Push caps (docs/campaigns.md, "Capping"): the admin API and the dashboard that set them, the
scheduled campaigns they cap by label (scheduler -> fan-out -> workers -> APNs simulator), the
transactional sends they do not, and the purge of their receipts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select

from clarion.capping.models import MAX_CAP_HOURS, RECEIPTS
from clarion.capping.tasks import purge_expired_receipts
from clarion.dashboard.models import Role
from clarion.db import transaction
from clarion.queue import JobQueue
from clarion.runtime import Runtime
from clarion.sdk.models import Installation
from tests.conftest import ClientApp
from tests.support.clock import Clock
from tests.support.dashboard import sign_in_as
from tests.test_campaign_runs import (
    add_installs,
    reached,
    scheduler,
    send_now,
)
from tests.test_campaigns import created, error, get
from tests.test_delivery import wait_for_send

PROMO_CAP = {"automations": None, "labels": {"promo": {"max": 1, "hours": 24}}}
NO_CAPS = {"automations": None, "labels": {}}


async def put_caps(api: httpx.AsyncClient, app: ClientApp, body: Any) -> httpx.Response:
    return await api.put(f"/admin/v1/apps/{app.app_id}/push-caps", headers=app.headers(), json=body)


async def read_caps(api: httpx.AsyncClient, app: ClientApp) -> Any:
    answer = await api.get(f"/admin/v1/apps/{app.app_id}/push-caps", headers=app.headers())
    assert answer.status_code == 200, answer.text
    return answer.json()


async def set_caps(api: httpx.AsyncClient, app: ClientApp, body: Any) -> None:
    answer = await put_caps(api, app, body)
    assert answer.status_code == 200, answer.text


async def receipts(runtime: Runtime, app: ClientApp) -> Counter[tuple[int, str]]:
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(RECEIPTS.c.installation_id, RECEIPTS.c.key).where(
                RECEIPTS.c.app_id == app.app_id
            )
        )
        return Counter((installation_id, key) for installation_id, key in rows)


def pushes_received(sim_control: httpx.Client, installs: list[Installation]) -> list[int]:
    counts = []
    for install in installs:
        got = sim_control.get(f"/_sim/apns/tokens/{install.push_token}")
        counts.append(0 if got.status_code == 404 else int(got.json()["count"]))
    return counts


class TestAdminApi:
    async def test_set_read_and_clear(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        assert await read_caps(api, ios_app) == NO_CAPS  # a new app caps nothing
        caps = {
            "automations": {"max": 3, "hours": 24},
            "labels": {
                "promo": {"max": 1, "hours": 24},
                "weekly news": {"max": 1000, "hours": MAX_CAP_HOURS},
                "c" * 128: {"max": 2, "hours": 1},
            },
        }
        answer = await put_caps(api, ios_app, caps)
        assert answer.status_code == 200, answer.text
        assert answer.json() == caps
        assert await read_caps(api, ios_app) == caps
        # The whole setting is replaced: what is not sent any more is not capped any more.
        await set_caps(api, ios_app, {"labels": {"promo": {"max": 2, "hours": 48}}})
        assert await read_caps(api, ios_app) == {
            "automations": None,
            "labels": {"promo": {"max": 2, "hours": 48}},
        }
        await set_caps(api, ios_app, {"automations": None, "labels": {}})
        assert await read_caps(api, ios_app) == NO_CAPS
        await set_caps(api, ios_app, {"automations": {"max": 1, "hours": 1}})
        await set_caps(api, ios_app, {})
        assert await read_caps(api, ios_app) == NO_CAPS

    async def test_a_hundred_labels_and_numbers_as_label_codes(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        labels = {f"label-{n}": {"max": 1, "hours": 24} for n in range(100)}
        await set_caps(api, ios_app, {"labels": labels})
        assert (await read_caps(api, ios_app))["labels"] == labels

    @pytest.mark.parametrize(
        ("body", "code", "why"),
        [
            ({"automations": {"max": 0, "hours": 24}}, 31, "automations.max: "),
            ({"automations": {"max": 1001, "hours": 24}}, 31, "automations.max: "),
            ({"automations": {"max": 1.5, "hours": 24}}, 31, "automations.max: "),
            ({"automations": {"max": "three", "hours": 24}}, 31, "automations.max: "),
            ({"automations": {"max": 1, "hours": 0}}, 31, "automations.hours: "),
            ({"automations": {"max": 1, "hours": MAX_CAP_HOURS + 1}}, 31, "automations.hours: "),
            ({"automations": {"max": 1, "hours": 2**70}}, 31, "automations.hours: "),
            ({"automations": {"max": 1}}, 30, "automations.hours is required"),
            ({"automations": {"hours": 1}}, 30, "automations.max is required"),
            ({"automations": {"max": 1, "hours": 1, "per": "day"}}, 31, "automations.per: "),
            ({"automations": 3}, 31, "automations: "),
            ({"labels": {"promo": {"max": 0, "hours": 24}}}, 31, "labels.promo.max: "),
            ({"labels": {"promo": {"max": 1, "hours": 721}}}, 31, "labels.promo.hours: "),
            ({"labels": {"promo": {"max": 1}}}, 30, "labels.promo.hours is required"),
            ({"labels": {"promo": 1}}, 31, "labels.promo: "),
            ({"labels": {"": {"max": 1, "hours": 1}}}, 31, "labels: a label code has 1 to 128"),
            (
                {"labels": {"c" * 129: {"max": 1, "hours": 1}}},
                31,
                "labels: a label code has 1 to 128 characters, as campaigns' labels; got 129",
            ),
            ({"labels": {"pro\x00mo": {"max": 1, "hours": 1}}}, 31, "labels.pro\x00mo: its name"),
            (
                {"labels": {f"l{n}": {"max": 1, "hours": 1} for n in range(101)}},
                31,
                "labels: Dictionary should have at most 100 items",
            ),
            ({"labels": ["promo"]}, 31, "labels: "),
            ({"caps": {}}, 31, "caps: "),
            (["promo"], 32, "JSON object"),
        ],
    )
    async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
        self, api: httpx.AsyncClient, ios_app: ClientApp, body: Any, code: int, why: str
    ) -> None:
        await set_caps(api, ios_app, PROMO_CAP)
        message = error(await put_caps(api, ios_app, body), 400, code)
        assert why in message, message
        assert await read_caps(api, ios_app) == PROMO_CAP

    async def test_only_the_companys_apps(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
    ) -> None:
        path = f"/admin/v1/apps/{ios_app.app_id}/push-caps"
        other_company = android_app.headers()
        error(await api.put(path, headers=other_company, json=PROMO_CAP), 404, 20)
        error(await api.get(path, headers=other_company), 404, 20)
        error(await api.put(path, json=PROMO_CAP), 401, 10)
        error(
            await api.get("/admin/v1/apps/999999999/push-caps", headers=ios_app.headers()), 404, 20
        )
        assert await read_caps(api, ios_app) == NO_CAPS


class TestScheduledCampaigns:
    async def test_a_label_capped_once_a_day_reaches_each_install_once(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        sim_control: httpx.Client,
    ) -> None:
        await set_caps(api, ios_app, PROMO_CAP)
        installs = await add_installs(runtime, ios_app, 4)
        first = await send_now(api, ios_app, runtime, labels=["promo", "spring"])
        assert pushes_received(sim_control, installs) == [1, 1, 1, 1]
        # One receipt per installation, for the capped label only.
        assert await receipts(runtime, ios_app) == Counter(
            {(i.id, "label:promo"): 1 for i in installs}
        )
        later = await add_installs(runtime, ios_app, 1)
        second = await send_now(api, ios_app, runtime, labels=["promo"])
        assert pushes_received(sim_control, installs + later) == [1, 1, 1, 1, 1]
        assert await reached(runtime, second) == Counter({later[0].id: 1})
        progress = (await get(api, ios_app, second)).json()["progress"]
        assert progress == {"targeted": 1, "sent": 1, "resent": 0, "errors": 0}
        assert (await get(api, ios_app, first)).json()["progress"]["targeted"] == 4
        # A campaign without a capped label is not capped, and leaves no receipt.
        await send_now(api, ios_app, runtime, labels=["spring"])
        await send_now(api, ios_app, runtime)
        assert pushes_received(sim_control, installs + later) == [3, 3, 3, 3, 3]
        assert sum((await receipts(runtime, ios_app)).values()) == 5

    async def test_a_cap_counts_the_period_behind_each_run(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, held_queue: JobQueue
    ) -> None:
        await set_caps(api, ios_app, {"labels": {"promo": {"max": 2, "hours": 24}}})
        installs = await add_installs(runtime, ios_app, 3)
        clock = Clock(datetime(2030, 6, 1, 10, 0, tzinfo=UTC))

        async def run_at(at: datetime) -> Counter[int]:
            clock.now = at
            token = await created(
                api, ios_app, push_time=at.strftime("%Y-%m-%dT%H:%M:%S"), labels=["promo"]
            )
            await scheduler(runtime, clock, queue=held_queue).tick()
            return await reached(runtime, token)

        everyone = Counter({i.id: 1 for i in installs})
        day = clock.now
        assert await run_at(day) == everyone
        assert await run_at(day + timedelta(hours=1)) == everyone
        assert await run_at(day + timedelta(hours=2)) == Counter()  # 2 in 24 h
        # 24 h after the first, one of the two has left the period.
        assert await run_at(day + timedelta(hours=24, seconds=1)) == everyone
        assert await run_at(day + timedelta(hours=24, minutes=30)) == Counter()

    async def test_two_campaigns_of_a_label_fanning_out_at_once_share_the_cap(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, held_queue: JobQueue
    ) -> None:
        await set_caps(api, ios_app, PROMO_CAP)
        installs = await add_installs(runtime, ios_app, 30)
        at = datetime(2030, 6, 1, 10, 0, tzinfo=UTC)
        tokens = [
            await created(api, ios_app, push_time="2030-06-01T10:00:00", labels=["promo"])
            for _ in range(3)
        ]
        # Pages of 10 installations: the three runs' fan-outs interleave page by page.
        await scheduler(runtime, Clock(at), queue=held_queue, batch_size=1).tick()
        total: Counter[int] = Counter()
        for token in tokens:
            total += await reached(runtime, token)
        assert total == Counter({i.id: 1 for i in installs})

    async def test_a_cap_set_later_counts_from_then(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        sim_control: httpx.Client,
    ) -> None:
        installs = await add_installs(runtime, ios_app, 2)
        await send_now(api, ios_app, runtime, labels=["promo"])
        assert await receipts(runtime, ios_app) == Counter()  # no cap, nothing counted
        await set_caps(api, ios_app, PROMO_CAP)
        await send_now(api, ios_app, runtime, labels=["promo"])
        await send_now(api, ios_app, runtime, labels=["promo"])
        assert pushes_received(sim_control, installs) == [2, 2]

    async def test_transactional_sends_are_not_capped(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        sim_control: httpx.Client,
    ) -> None:
        await set_caps(api, ios_app, PROMO_CAP)
        installs = await add_installs(runtime, ios_app, 1)
        await send_now(api, ios_app, runtime, labels=["promo"])
        for _ in range(2):
            answer = await api.post(
                f"/1.1/{ios_app.api_key}/transactional/send",
                headers=ios_app.headers(),
                json={
                    "group_id": "orders",
                    "labels": ["promo"],
                    "recipients": {"install_ids": [installs[0].install_id]},
                    "message": {"title": "Shipped", "body": "Your order is on its way"},
                },
            )
            assert answer.status_code == 201, answer.text
            await wait_for_send(api, ios_app, answer.json()["token"])
        assert pushes_received(sim_control, installs) == [3]
        assert sum((await receipts(runtime, ios_app)).values()) == 1


class TestPurge:
    async def test_receipts_older_than_the_longest_cap_go_in_short_transactions(
        self, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        now = datetime(2030, 6, 1, 10, 0, tzinfo=UTC)
        limit = now - timedelta(hours=MAX_CAP_HOURS)
        ages = [limit - timedelta(days=d) for d in (1, 2, 3, 4, 5)]
        kept = [limit, limit + timedelta(seconds=1), now]
        async with transaction(runtime.sessions) as session:
            await session.execute(
                insert(RECEIPTS),
                [
                    {
                        "app_id": ios_app.app_id,
                        "installation_id": n,
                        "key": "label:promo",
                        "sent_at": at,
                    }
                    for n, at in enumerate(ages + kept)
                ],
            )
        # (Other tests' receipts are older than this clock's limit too: the purge takes them.)
        purged = await purge_expired_receipts(runtime.sessions, clock=lambda: now, batch=2)
        assert purged >= 5
        async with runtime.sessions() as session:
            left = await session.scalars(
                select(RECEIPTS.c.sent_at).where(RECEIPTS.c.app_id == ios_app.app_id)
            )
            assert sorted(left) == kept
            assert (
                await session.scalar(
                    select(func.count()).select_from(RECEIPTS).where(RECEIPTS.c.sent_at < limit)
                )
                == 0
            )
        assert await purge_expired_receipts(runtime.sessions, clock=lambda: now) == 0


class TestDashboard:
    async def test_an_admin_sets_the_caps_on_the_settings_page(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        login.use(api)
        path = f"/dashboard/apps/{ios_app.app_id}/push-caps"
        saved = await api.post(
            path,
            data={
                "csrf_token": login.csrf,
                "automations_max": " 3 ",
                "automations_hours": "24",
                "labels": "promo 1 24\n\n  weekly news 2 168 \n",
            },
        )
        assert saved.status_code == 200, saved.text
        assert "Push caps saved." in saved.text
        expected = {
            "automations": {"max": 3, "hours": 24},
            "labels": {"promo": {"max": 1, "hours": 24}, "weekly news": {"max": 2, "hours": 168}},
        }
        assert await read_caps(api, ios_app) == expected
        page = await api.get(f"/dashboard/apps/{ios_app.app_id}/settings")
        assert ">promo 1 24\nweekly news 2 168\n</textarea>" in page.text
        assert 'name="automations_max" inputmode="numeric" maxlength="20" value="3"' in page.text

    @pytest.mark.parametrize(
        ("fields", "why"),
        [
            ({"labels": "promo 0 24"}, "labels.promo.max: Input should be greater than or equal"),
            ({"labels": "promo 1 721"}, "labels.promo.hours: Input should be less than or equal"),
            ({"labels": "promo 1 day"}, "labels.promo.hours: Input should be a valid integer"),
            ({"labels": "promo 1"}, "labels: line 1: write the label&#39;s code"),
            ({"labels": "promo 1 24\npromo 2 48"}, "labels: line 2: promo is capped twice"),
            ({"automations_max": "3"}, "automations.hours: Input should be a valid integer"),
            ({"automations_hours": "24"}, "automations.max: Input should be a valid integer"),
            ({"automations_max": "0", "automations_hours": "24"}, "automations.max: "),
        ],
    )
    async def test_bad_caps_are_refused_and_kept_for_correction(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime, fields: Any, why: str
    ) -> None:
        await set_caps(api, ios_app, PROMO_CAP)
        login = await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)
        login.use(api)
        refused = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/push-caps",
            data={"csrf_token": login.csrf, **fields},
        )
        assert refused.status_code == 400
        assert why in refused.text
        if "labels" in fields:
            assert f">{fields['labels']}</textarea>" in refused.text
        assert await read_caps(api, ios_app) == PROMO_CAP

    async def test_viewers_read_the_caps(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        (await sign_in_as(runtime, app_id=web_app.app_id, role=Role.VIEWER)).use(api)
        page = await api.get(f"/dashboard/apps/{web_app.app_id}/settings")
        assert "No push is capped." in page.text
        await set_caps(
            api,
            web_app,
            {"automations": {"max": 3, "hours": 24}, "labels": {"promo": {"max": 1, "hours": 24}}},
        )
        page = await api.get(f"/dashboard/apps/{web_app.app_id}/settings")
        assert "<li>Automations: at most 3 in 24 h</li>" in page.text
        assert "<li>Label <code>promo</code>: at most 1 in 24 h</li>" in page.text
        assert "/push-caps" not in page.text
        forbidden = await api.post(
            f"/dashboard/apps/{web_app.app_id}/push-caps", data={"labels": "promo 1 24"}
        )
        assert forbidden.status_code in (403, 400)
        assert await read_caps(api, web_app) == {
            "automations": {"max": 3, "hours": 24},
            "labels": {"promo": {"max": 1, "hours": 24}},
        }
