"""In-app themes through the admin API (docs/inapp.md, "Themes"): the built-in `default`,
create, replace, read, delete, and what is refused."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.inapp.test_api import EXAMPLE, created, revision, update
from tests.test_campaigns import error

DARK: dict[str, Any] = {
    "name": "Dark banner",
    "layout": "banner_bottom",
    "colours": {"background": "#111", "text": "#EEEEEE", "button_background": "#2563ebcc"},
    "font": {"family": "'Inter', sans-serif", "size": 18},
    "close_button": "none",
    "corner_radius": 0,
    "auto_close_seconds": 8,
}


def themes_url(app: ClientApp, code: str = "") -> str:
    return f"/admin/v1/apps/{app.app_id}/inapp-themes" + (f"/{code}" if code else "")


async def put(api: httpx.AsyncClient, app: ClientApp, code: str, body: Any) -> httpx.Response:
    return await api.put(themes_url(app, code), headers=app.headers(), json=body)


async def test_every_app_has_the_built_in_default(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    for path in (themes_url(ios_app), themes_url(ios_app) + "/"):
        listed = await api.get(path, headers=ios_app.headers())
        assert listed.status_code == 200, listed.text
        assert [(t["code"], t["built_in"], t["layout"]) for t in listed.json()] == [
            ("default", True, "modal")
        ]
    got = await api.get(themes_url(ios_app, "default"), headers=ios_app.headers())
    assert got.json()["name"] == "Default (modal)"


async def test_create_read_replace_and_delete(
    api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
) -> None:
    response = await put(api, ios_app, "dark", DARK)
    assert response.status_code == 200, response.text
    theme = response.json()
    assert (theme["code"], theme["built_in"], theme["layout"]) == ("dark", False, "banner_bottom")
    # Colours not given take the defaults.
    assert theme["colours"]["background"] == "#111"
    assert theme["colours"]["close"] == "#52606D"
    assert await revision(runtime, ios_app) == 1
    got = await api.get(themes_url(ios_app, "dark") + "/", headers=ios_app.headers())
    assert got.json() == theme

    # PUT replaces the whole theme; null stands for an absent optional field.
    replaced = await put(api, ios_app, "dark", {"name": "Plain", "layout": None, "font": None})
    assert replaced.status_code == 200, replaced.text
    assert (replaced.json()["name"], replaced.json()["layout"]) == ("Plain", "modal")
    assert replaced.json()["corner_radius"] == 12
    listed = (await api.get(themes_url(ios_app), headers=ios_app.headers())).json()
    assert [t["code"] for t in listed] == ["default", "dark"]

    deleted = await api.delete(themes_url(ios_app, "dark"), headers=ios_app.headers())
    assert deleted.status_code == 204, deleted.text
    error(await api.get(themes_url(ios_app, "dark"), headers=ios_app.headers()), 404, 20)
    error(await api.delete(themes_url(ios_app, "dark"), headers=ios_app.headers()), 404, 20)
    assert await revision(runtime, ios_app) == 3


async def test_a_campaign_names_a_theme_of_its_app(
    api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
) -> None:
    body = {**EXAMPLE, "landing": {**EXAMPLE["landing"], "theme": "dark"}}
    refused = await api.post(
        f"/1.1/{ios_app.api_key}/in-app-campaigns/create", headers=ios_app.headers(), json=body
    )
    assert "landing.theme: this app has no in-app theme 'dark'" in error(refused, 400, 31)
    # Another app's theme of that code is not this app's.
    assert (await put(api, android_app, "dark", DARK)).status_code == 200
    refused = await api.post(
        f"/1.1/{ios_app.api_key}/in-app-campaigns/create", headers=ios_app.headers(), json=body
    )
    assert "landing.theme" in error(refused, 400, 31)
    assert (await put(api, ios_app, "dark", DARK)).status_code == 200
    assert await created(api, ios_app, body)


async def test_a_theme_a_live_campaign_uses_cannot_be_deleted(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    assert (await put(api, ios_app, "dark", DARK)).status_code == 200
    token = await created(
        api,
        ios_app,
        {**EXAMPLE, "name": "Spring sale", "landing": {**EXAMPLE["landing"], "theme": "dark"}},
    )
    refused = await api.delete(themes_url(ios_app, "dark"), headers=ios_app.headers())
    message = error(refused, 400, 31)
    assert "'Spring sale'" in message
    assert token in message
    # A draft does not hold it.
    assert (await update(api, ios_app, token, {"live": False})).status_code == 200
    deleted = await api.delete(themes_url(ios_app, "dark"), headers=ios_app.headers())
    assert deleted.status_code == 204, deleted.text
    # ...but may not go live again without it.
    refused = await update(api, ios_app, token, {"live": True})
    assert "landing.theme" in error(refused, 400, 31)


async def test_the_built_in_theme_cannot_be_changed_or_deleted(
    api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    assert "built-in" in error(await put(api, ios_app, "default", DARK), 400, 31)
    refused = await api.delete(themes_url(ios_app, "default"), headers=ios_app.headers())
    assert "built-in" in error(refused, 400, 31)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({**DARK, "colours": {"background": "red"}}, "colours.background"),
        ({**DARK, "colours": {"text": "#12345"}}, "colours.text"),
        ({**DARK, "colours": {"tint": "#123"}}, "colours.tint"),
        ({**DARK, "font": {"family": "x; } body { color: red"}}, "font.family"),
        ({**DARK, "font": {"size": 100}}, "font.size"),
        ({**DARK, "layout": "sidebar"}, "layout"),
        ({**DARK, "close_button": "bottom"}, "close_button"),
        ({**DARK, "corner_radius": -1}, "corner_radius"),
        ({**DARK, "auto_close_seconds": 121}, "auto_close_seconds"),
        ({**DARK, "name": ""}, "name"),
        ({**DARK, "extra": 1}, "extra"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    body: dict[str, Any], named: str, api: httpx.AsyncClient, ios_app: ClientApp
) -> None:
    assert named in error(await put(api, ios_app, "dark", body), 400, 31)
    error(await api.get(themes_url(ios_app, "dark"), headers=ios_app.headers()), 404, 20)


async def test_a_missing_name_is_code_30(api: httpx.AsyncClient, ios_app: ClientApp) -> None:
    assert "name is required" in error(await put(api, ios_app, "dark", {}), 400, 30)


@pytest.mark.parametrize("code", ["no%20space", "-dash-first", "x" * 65])
async def test_a_bad_code_is_refused(code: str, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
    response = await put(api, ios_app, code, DARK)
    assert response.status_code == 400, response.text


async def test_another_companys_app_is_not_found(
    api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
) -> None:
    assert (await put(api, ios_app, "dark", DARK)).status_code == 200
    headers = android_app.headers()
    for response in (
        await api.get(themes_url(ios_app), headers=headers),
        await api.get(themes_url(ios_app, "dark"), headers=headers),
        await api.put(themes_url(ios_app, "dark"), headers=headers, json=DARK),
        await api.delete(themes_url(ios_app, "dark"), headers=headers),
    ):
        assert "no app" in error(response, 404, 20)
    assert (await api.get(themes_url(ios_app, "dark"), headers=ios_app.headers())).json()[
        "name"
    ] == DARK["name"]
    no_key = await api.get(themes_url(ios_app))
    assert no_key.status_code == 401
