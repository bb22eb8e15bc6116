"""Partners Transactional API: `template_id` names a saved campaign whose content is sent, and
the fields of the call override it (seed 000, spec §3.4)."""

from __future__ import annotations

from typing import Any

import httpx

from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.test_campaigns import created, error
from tests.test_delivery import apns_token, received, register, wait_for_send

TEMPLATE = {
    "name": "Order shipped",
    "live": False,
    "push_time": "now",
    "deeplink": "shop://orders",
    "custom_payload": '{"kind": "shipping"}',
    "messages": [
        {"language": "en", "title": "Shipped", "body": "Your order is on its way"},
        {"language": "fr", "title": "Expédiée", "body": "Votre commande arrive"},
    ],
}


async def send(api: httpx.AsyncClient, app: ClientApp, body: dict[str, Any]) -> httpx.Response:
    return await api.post(
        f"/1.1/{app.api_key}/transactional/send", headers=app.headers(), json=body
    )


async def test_the_minimal_payload_sends_the_templates_content(
    api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
) -> None:
    template = await created(api, ios_app, TEMPLATE)
    token = apns_token()
    await register(api, ios_app, "ios-fr", push_token=token, custom_id="marie", language="fr")
    response = await send(
        api, ios_app, {"recipients": {"custom_ids": ["marie"]}, "template_id": template}
    )
    assert response.status_code == 201, response.text
    state = await wait_for_send(api, ios_app, response.json()["token"])
    assert (state["sent"], state["group_id"]) == (1, template)
    payload = received(sim_control, "apns", token)["messages"][-1]["payload"]
    assert payload["aps"]["alert"] == {"title": "Expédiée", "body": "Votre commande arrive"}
    assert payload["com.batch"]["l"] == "shop://orders"
    assert payload["kind"] == "shipping"


async def test_fields_of_the_call_override_the_template(
    api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
) -> None:
    template = await created(api, ios_app, TEMPLATE)
    token = apns_token()
    await register(api, ios_app, "ios-en", push_token=token, custom_id="john", language="en")
    response = await send(
        api,
        ios_app,
        {
            "recipients": {"custom_ids": ["john"]},
            "template_id": template,
            "group_id": "shipping-eu",
            "message": {"title": "Out for delivery", "body": "Today before 6 pm"},
            "deeplink": "shop://orders/42",
        },
    )
    assert response.status_code == 201, response.text
    state = await wait_for_send(api, ios_app, response.json()["token"])
    assert state["group_id"] == "shipping-eu"
    payload = received(sim_control, "apns", token)["messages"][-1]["payload"]
    assert payload["aps"]["alert"] == {"title": "Out for delivery", "body": "Today before 6 pm"}
    assert payload["com.batch"]["l"] == "shop://orders/42"
    assert payload["kind"] == "shipping"  # not overridden: the template's


async def test_an_unknown_or_foreign_template_is_refused(
    api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp, runtime: Runtime
) -> None:
    foreign = await created(api, android_app, TEMPLATE)
    for template in ("0" * 32, foreign):
        response = await send(
            api, ios_app, {"recipients": {"custom_ids": ["x"]}, "template_id": template}
        )
        assert "template_id" in error(response, 400, 31)


async def test_without_a_template_group_id_and_message_stay_required(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    message = {"body": "hi"}
    response = await send(api, ios_app, {"recipients": {"custom_ids": ["x"]}, "message": message})
    assert "group_id" in error(response, 400, 30)
    response = await send(api, ios_app, {"recipients": {"custom_ids": ["x"]}, "group_id": "g"})
    assert "message" in error(response, 400, 30)


async def test_an_override_of_a_personalised_template_is_sent_as_given(
    api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
) -> None:
    personalised = {
        **TEMPLATE,
        "messages": [{"language": "en", "body": "Hi {{ c.name | default('you') }}"}],
    }
    template = await created(api, ios_app, personalised)
    token = apns_token()
    await register(api, ios_app, "ios-p", push_token=token, custom_id="paul", language="en")
    response = await send(
        api,
        ios_app,
        {
            "recipients": {"custom_ids": ["paul"]},
            "template_id": template,
            "message": {"body": "Plain text, 100% literal"},
        },
    )
    assert response.status_code == 201, response.text
    await wait_for_send(api, ios_app, response.json()["token"])
    payload = received(sim_control, "apns", token)["messages"][-1]["payload"]
    assert payload["aps"]["alert"]["body"] == "Plain text, 100% literal"


async def test_an_override_that_is_a_broken_template_is_refused(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    template = await created(api, ios_app, TEMPLATE)
    response = await send(
        api,
        ios_app,
        {
            "recipients": {"custom_ids": ["x"]},
            "template_id": template,
            "message": {"body": "50% off {{ today"},
        },
    )
    assert "template" in error(response, 400, 31)
