"""What a Dev-key send can reveal: nothing of the app's data (docs/api-keys.md).

The attacker holds the Dev key only. They register a debug installation through the SDK API
and claim someone else's custom id, then send to it: a campaign (targeting and personalisation)
or a transactional send (personalisation, template_id). End to end through the APNs simulator:
whatever the attacker's device shows is what the attacker learnt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.support.clock import Clock
from tests.test_campaign_runs import scheduler, wait_delivered
from tests.test_campaigns import EXAMPLE, create, error
from tests.test_delivery import apns_token, received, register, transactional, wait_for_send

SECRET = {"u.plan": "SECRET-PREMIUM", "u.email_hash": "abc123"}
PEEK = [{"language": "en", "title": "plan={{ c.plan }}", "body": "h={{ c.email_hash }}"}]


@pytest.fixture
async def victim(api: httpx.AsyncClient, ios_app: ClientApp) -> str:
    """A release install of demo-user, whose Custom Data the Live key set; returns its token."""
    token = apns_token()
    await register(api, ios_app, "victim-phone", push_token=token, custom_id="demo-user")
    response = await api.post(
        f"/1.0/{ios_app.api_key}/data/users/demo-user",
        headers=ios_app.headers(),
        json={"values": SECRET},
    )
    assert response.status_code in (200, 202), response.text
    return token


@pytest.fixture
async def attacker(api: httpx.AsyncClient, ios_app: ClientApp, victim: str) -> str:
    """A debug install registered with the Dev key, claiming demo-user; returns its token."""
    token = apns_token()
    await register(
        api,
        ios_app,
        "attacker-phone",
        key=ios_app.dev_api_key,
        push_token=token,
        custom_id="demo-user",
    )
    return token


Campaign = Callable[..., Awaitable[str]]


@pytest.fixture
def campaign(api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime) -> Campaign:
    """Creates a `push_time: now` campaign with `key`, runs it and waits until delivered."""

    async def run(key: str, **body: Any) -> str:
        response = await create(api, ios_app, {**EXAMPLE, "push_time": "now", **body}, key=key)
        assert response.status_code == 201, response.text
        token: str = response.json()["campaign_token"]
        await scheduler(runtime, Clock(datetime.now(UTC))).tick()
        await wait_delivered(runtime, token)
        return token

    return run


def shown(sim_control: httpx.Client, token: str) -> list[tuple[str, str]]:
    return [
        (m["payload"]["aps"]["alert"].get("title", ""), m["payload"]["aps"]["alert"]["body"])
        for m in received(sim_control, "apns", token)["messages"]
    ]


class TestDevCampaigns:
    async def test_the_attack_delivers_no_profile_value(
        self,
        ios_app: ClientApp,
        campaign: Campaign,
        sim_control: httpx.Client,
        attacker: str,
    ) -> None:
        await campaign(
            ios_app.dev_api_key,
            targeting={"query": {"c.plan": {"$exists": True}}},
            messages=PEEK,
        )
        assert shown(sim_control, attacker) == [("plan=", "h=")]

    async def test_targeting_is_not_applied_so_it_is_no_oracle(
        self,
        ios_app: ClientApp,
        campaign: Campaign,
        sim_control: httpx.Client,
        attacker: str,
        victim: str,
    ) -> None:
        """Right guess or wrong guess, the debug install receives it (Batch, spec §1.3: the
        Dev key's pushes reach all debug installations, untargeted); release installs never."""
        for guess in ("SECRET-PREMIUM", "WRONG"):
            await campaign(
                ios_app.dev_api_key,
                targeting={"query": {"c.plan": guess}, "languages": ["xx"]},
                messages=[{"language": "en", "body": guess}],
            )
        assert [body for _, body in shown(sim_control, attacker)] == ["SECRET-PREMIUM", "WRONG"]
        assert received(sim_control, "apns", victim)["count"] == 0

    async def test_audience_names_are_not_checked_for_the_dev_key(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        """Refusing an unknown audience name would tell the Dev key which audiences exist."""
        body = {**EXAMPLE, "targeting": {"custom_audiences": ["does-it-exist"]}}
        assert (await create(api, ios_app, body, key=ios_app.dev_api_key)).status_code == 201
        refused = await create(api, ios_app, body)
        assert "custom_audiences" in error(refused, 400, 31)

    async def test_the_live_key_still_targets_and_personalises(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        campaign: Campaign,
        sim_control: httpx.Client,
        attacker: str,
        victim: str,
    ) -> None:
        other = apns_token()
        await register(api, ios_app, "other-phone", push_token=other, custom_id="someone-else")
        await campaign(
            ios_app.api_key,
            targeting={"query": {"c.plan": "SECRET-PREMIUM"}},
            messages=PEEK,
        )
        assert shown(sim_control, victim) == [("plan=SECRET-PREMIUM", "h=abc123")]
        assert received(sim_control, "apns", other)["count"] == 0
        assert received(sim_control, "apns", attacker)["count"] == 0


class TestDevTransactional:
    async def test_a_personalised_dev_send_renders_the_defaults(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        attacker: str,
        victim: str,
    ) -> None:
        """Transactional texts are personalised through a campaign named as template_id."""
        sends = []
        for key in (ios_app.dev_api_key, ios_app.api_key):
            template = await create(api, ios_app, {**EXAMPLE, "messages": PEEK}, key=key)
            sends.append(
                await transactional(
                    api,
                    ios_app,
                    key=key,
                    recipients={"custom_ids": ["demo-user"]},
                    message=None,
                    template_id=template.json()["campaign_token"],
                )
            )
        for send in sends:
            await wait_for_send(api, ios_app, send)
        assert shown(sim_control, attacker) == [("plan=", "h=")]
        assert shown(sim_control, victim) == [("plan=SECRET-PREMIUM", "h=abc123")]

    async def test_the_dev_key_names_only_its_own_campaigns_as_template(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        attacker: str,
    ) -> None:
        live_campaign = await create(
            api, ios_app, {**EXAMPLE, "messages": [{"language": "en", "body": "Live only"}]}
        )
        dev_campaign = await create(
            api,
            ios_app,
            {**EXAMPLE, "messages": [{"language": "en", "body": "Dev template"}]},
            key=ios_app.dev_api_key,
        )
        url = f"/1.1/{ios_app.dev_api_key}/transactional/send"
        body = {"group_id": "g", "recipients": {"custom_ids": ["demo-user"]}}
        refused = await api.post(
            url,
            headers=ios_app.headers(),
            json={**body, "template_id": live_campaign.json()["campaign_token"]},
        )
        assert "template_id" in error(refused, 403, 12)
        accepted = await api.post(
            url,
            headers=ios_app.headers(),
            json={**body, "template_id": dev_campaign.json()["campaign_token"]},
        )
        assert accepted.status_code == 201, accepted.text
        await wait_for_send(api, ios_app, accepted.json()["token"])
        assert [text for _, text in shown(sim_control, attacker)] == ["Dev template"]
