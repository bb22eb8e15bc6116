"""A push's `landing` (issue 19 item 3): accepted on the Campaigns and Transactional APIs, stored,
and carried to the device under `com.batch.ld` in its language, its theme resolved, through the
real delivery path to the APNs, FCM and Web Push simulators."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import delete

from clarion.db import transaction
from clarion.inapp.models import InAppTheme
from clarion.inapp.schemas import ThemeBody, ThemeColours
from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.test_campaign_runs import send_now
from tests.test_campaigns import EXAMPLE, create, created, error, get, update
from tests.test_delivery import (
    apns_token,
    received,
    register,
    subscribe_browser,
    transactional,
    wait_for_send,
)
from tests.test_partners_transactional import send

LANDING = {
    "theme": "promo",
    "image": "https://cdn.example/sale.png",
    "image_description": "A red tag",
    "contents": [
        {
            "language": "en",
            "header": "Today only",
            "title": "Sale",
            "body": "Everything half price",
            "actions": [{"label": "Shop", "action": "deeplink", "args": {"l": "shop://sale"}}],
        },
        {
            "language": "fr",
            "title": "Soldes",
            "body": "Tout à moitié prix",
            "actions": [{"label": "Fermer", "action": "DISMISS"}],
        },
    ],
}
# What the app is handed for the theme `promo` below: its whole definition, by code.
PROMO_THEME = {
    "code": "promo",
    "layout": "banner_top",
    "colours": {**ThemeColours().model_dump(), "background": "#111111", "text": "#EEEEEE"},
    "font": {"family": "Georgia, serif", "size": 18},
    "close_button": "top_left",
    "corner_radius": 4,
    "auto_close_seconds": 8,
}


async def add_theme(runtime: Runtime, app: ClientApp, code: str = "promo") -> None:
    """The theme as the admin API stores it (an InAppTheme row holding its ThemeBody)."""
    body = ThemeBody(
        name="Promo",
        layout="banner_top",
        colours=ThemeColours(background="#111111", text="#EEEEEE"),
        font={"family": "Georgia, serif", "size": 18},
        close_button="top_left",
        corner_radius=4,
        auto_close_seconds=8,
    )
    async with transaction(runtime.sessions) as session:
        session.add(
            InAppTheme(
                app_id=app.app_id, code=code, name=body.name, body=body.model_dump(mode="json")
            )
        )


async def device(
    api: httpx.AsyncClient, app: ClientApp, sim_control: httpx.Client, language: str
) -> str:
    """A device of `app` registered with `language` for the custom id `lang-<language>`; returns
    the id under which its simulator keeps what it receives."""
    custom_id = f"lang-{language}"
    install_id = f"{app.platform}-{language}-{secrets.token_hex(4)}"
    if app.platform == "web":
        sub = await subscribe_browser(api, app, sim_control)
        await register(
            api, app, install_id, webpush_subscription=sub, custom_id=custom_id, language=language
        )
        endpoint: str = sub["endpoint"]
        return endpoint.rsplit("/", 1)[1]
    token = apns_token() if app.platform == "ios" else "fcm-" + secrets.token_urlsafe(40)
    await register(api, app, install_id, push_token=token, custom_id=custom_id, language=language)
    return token


def batch_metadata(sim_control: httpx.Client, app: ClientApp, token: str) -> dict[str, Any]:
    """The `com.batch` object of the last push the device received."""
    service = {"ios": "apns", "android": "fcm", "web": "webpush"}[app.platform]
    payload = received(sim_control, service, token)["messages"][-1]["payload"]
    if app.platform == "android":
        metadata: dict[str, Any] = orjson.loads(payload["message"]["data"]["com.batch"])
        return metadata
    found: dict[str, Any] = payload["com.batch"]
    return found


async def send_with_landing(
    api: httpx.AsyncClient, app: ClientApp, landing: dict[str, Any], **fields: Any
) -> httpx.Response:
    """A transactional call with a message and this landing (refused ones reach no device)."""
    body = {"group_id": "g", "recipients": {"custom_ids": ["x"]}, "message": {"body": "b"}}
    return await send(api, app, {**body, "landing": landing, **fields})


def landings_received(
    sim_control: httpx.Client, app: ClientApp, devices: dict[str, str]
) -> dict[str, Any]:
    """`com.batch.ld` of the last push each device (language: simulator id) received."""
    return {lang: batch_metadata(sim_control, app, token)["ld"] for lang, token in devices.items()}


@pytest.fixture(params=["ios", "android", "web"])
def any_app(
    request: pytest.FixtureRequest, ios_app: ClientApp, android_app: ClientApp, web_app: ClientApp
) -> ClientApp:
    return {"ios": ios_app, "android": android_app, "web": web_app}[str(request.param)]


EN_LANDING = {
    "theme": PROMO_THEME,
    "image": "https://cdn.example/sale.png",
    "image_description": "A red tag",
    "header": "Today only",
    "title": "Sale",
    "body": "Everything half price",
    "actions": [{"label": "Shop", "action": "deeplink", "args": {"l": "shop://sale"}}],
}
FR_LANDING = {
    "theme": PROMO_THEME,
    "image": "https://cdn.example/sale.png",
    "image_description": "A red tag",
    "title": "Soldes",
    "body": "Tout à moitié prix",
    "actions": [{"label": "Fermer", "action": "dismiss"}],
}


class TestDelivered:
    async def test_a_campaigns_landing_reaches_each_device_in_its_language(
        self,
        api: httpx.AsyncClient,
        any_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        await add_theme(runtime, any_app)
        devices = {lang: await device(api, any_app, sim_control, lang) for lang in ("fr", "de")}
        await send_now(api, any_app, runtime, landing=LANDING)
        # "de" has no content: the first one, as for messages without a "default".
        landings = landings_received(sim_control, any_app, devices)
        assert landings == {"fr": FR_LANDING, "de": EN_LANDING}

    async def test_a_transactional_landing_reaches_each_device_in_its_language(
        self,
        api: httpx.AsyncClient,
        any_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        await add_theme(runtime, any_app)
        landing = {
            **LANDING,
            "contents": [*LANDING["contents"], {"language": "default", "title": "Hi"}],
        }
        devices = {lang: await device(api, any_app, sim_control, lang) for lang in ("en", "ja")}
        send_token = await transactional(
            api,
            any_app,
            recipients={"custom_ids": ["lang-en", "lang-ja"]},
            landing=landing,
        )
        state = await wait_for_send(api, any_app, send_token)
        assert state["sent"] == 2, state
        landings = landings_received(sim_control, any_app, devices)
        default = {"theme": PROMO_THEME, "image": LANDING["image"], "title": "Hi"}
        default |= {"image_description": "A red tag", "actions": []}
        assert landings == {"en": EN_LANDING, "ja": default}

    async def test_the_flat_form_is_one_default_content_with_the_built_in_theme(
        self, api: httpx.AsyncClient, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        token = await device(api, ios_app, sim_control, "it")
        flat = {
            "title": "Ciao",
            "body": "Welcome",
            "actions": [{"label": "OK", "action": "continue"}],
        }
        send_token = await transactional(
            api, ios_app, recipients={"custom_ids": ["lang-it"]}, landing=flat
        )
        assert (await wait_for_send(api, ios_app, send_token))["sent"] == 1
        landing = batch_metadata(sim_control, ios_app, token)["ld"]
        assert {k: landing[k] for k in flat} == flat
        assert landing["theme"]["code"] == "default"
        assert landing["theme"]["layout"] == "modal"

    async def test_a_templates_landing_is_sent_and_a_deeplink_of_the_call_replaces_it(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        sim_control: httpx.Client,
        runtime: Runtime,
    ) -> None:
        await add_theme(runtime, ios_app)
        template = await created(api, ios_app, live=False, landing=LANDING)
        token = await device(api, ios_app, sim_control, "fr")
        for extra, expected in (({}, FR_LANDING), ({"deeplink": "shop://cart"}, None)):
            response = await send(
                api,
                ios_app,
                {"recipients": {"custom_ids": ["lang-fr"]}, "template_id": template, **extra},
            )
            assert response.status_code == 201, response.text
            await wait_for_send(api, ios_app, response.json()["token"])
            batch = batch_metadata(sim_control, ios_app, token)
            assert batch.get("ld") == expected
            assert batch.get("l") == extra.get("deeplink")


class TestStored:
    async def test_get_answers_the_landing_flat_form_normalised(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await add_theme(runtime, ios_app)
        token = await created(api, ios_app, landing=LANDING)
        got = (await get(api, ios_app, token)).json()
        assert got["landing"]["theme"] == "promo"
        assert got["landing"]["image"] == LANDING["image"]
        assert [c["title"] for c in got["landing"]["contents"]] == ["Sale", "Soldes"]
        assert got["landing"]["contents"][1]["actions"] == [
            {"label": "Fermer", "action": "dismiss"}
        ]

        flat = await created(api, ios_app, landing={"theme": "promo", "body": "Hello"})
        got = (await get(api, ios_app, flat)).json()
        assert got["landing"]["contents"] == [{"language": "default", "body": "Hello"}]


class TestRefused:
    async def test_an_unknown_theme_names_landing_theme(
        self,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        android_app: ClientApp,
        runtime: Runtime,
    ) -> None:
        unknown = {**LANDING, "theme": "nope"}
        assert "landing.theme" in error(
            await create(api, ios_app, {**EXAMPLE, "landing": unknown}), 400, 31
        )
        token = await created(api, ios_app)
        assert "landing.theme" in error(
            await update(api, ios_app, token, {"landing": unknown}), 400, 31
        )
        assert "landing" not in (await get(api, ios_app, token)).json()
        response = await send_with_landing(api, ios_app, unknown)
        assert "landing.theme" in error(response, 400, 31)
        # Another app's theme is not this one's.
        await add_theme(runtime, android_app, code="theirs")
        body = {**EXAMPLE, "landing": {**LANDING, "theme": "theirs"}}
        assert "landing.theme" in error(await create(api, ios_app, body), 400, 31)
        await add_theme(runtime, ios_app, code="theirs")
        assert (await create(api, ios_app, body)).status_code == 201

    async def test_a_deleted_theme_blocks_no_other_change(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await add_theme(runtime, ios_app)
        token = await created(api, ios_app, landing=LANDING)
        async with transaction(runtime.sessions) as session:
            await session.execute(delete(InAppTheme).where(InAppTheme.app_id == ios_app.app_id))
        assert (await update(api, ios_app, token, {"live": False})).status_code == 200
        response = await update(
            api, ios_app, token, {"landing": {**LANDING, "image": "https://cdn.example/new.png"}}
        )
        assert "landing.theme" in error(response, 400, 31)

    async def test_deeplink_and_landing_are_mutually_exclusive(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {**EXAMPLE, "deeplink": "shop://x", "landing": {"title": "T"}}
        message = error(await create(api, ios_app, body), 400, 31)
        assert message.startswith("MALFORMED_PARAMETER: landing: deeplink and landing")
        token = await created(api, ios_app, deeplink="shop://x")
        assert "deeplink" in error(
            await update(api, ios_app, token, {"landing": {"title": "T"}}), 400, 31
        )
        response = await send_with_landing(api, ios_app, {"title": "T"}, deeplink="shop://x")
        assert "mutually exclusive" in error(response, 400, 31)

    async def test_a_version_in_a_push_landing_is_refused(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        landing = {"contents": [{"language": "en", "version": "a", "title": "T"}]}
        message = error(await create(api, ios_app, {**EXAMPLE, "landing": landing}), 400, 31)
        assert message.startswith("MALFORMED_PARAMETER: landing.contents.0.version:")

    async def test_deeply_nested_action_args_are_refused_not_a_500(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        nested: list[Any] = []
        for _ in range(300):  # past the 254 levels JSON encoders write
            nested = [nested]
        action = {"label": "Go", "action": "continue", "args": {"x": nested}}
        landing = {"title": "T", "actions": [action]}
        message = error(await create(api, ios_app, {**EXAMPLE, "landing": landing}), 400, 31)
        assert message.startswith("MALFORMED_PARAMETER: landing.contents.0.actions.0: args:")

    async def test_a_landing_that_makes_the_push_too_large_names_landing(
        self, api: httpx.AsyncClient, any_app: ClientApp
    ) -> None:
        # 2,000 characters (4,000 bytes) fit a landing's body (4,096 characters) but not a
        # push (4 KB), in French only: the largest language decides.
        landing = {
            "contents": [
                {"language": "en", "body": "short"},
                {"language": "fr", "body": "é" * 2000},
            ]
        }
        message = error(await create(api, any_app, {**EXAMPLE, "landing": landing}), 400, 31)
        assert message.startswith("MALFORMED_PARAMETER: landing:")
        assert "in language 'fr'" in message
        response = await send_with_landing(api, any_app, landing)
        assert error(response, 400, 31).startswith("MALFORMED_PARAMETER: landing:")
        # The same landing a little shorter is accepted.
        landing["contents"][1]["body"] = "é" * 1500
        assert (await create(api, any_app, {**EXAMPLE, "landing": landing})).status_code == 201
