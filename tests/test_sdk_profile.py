"""SDK API profile edits (the Web SDK's profile().edit): typed attributes and tags written to
the profile of the installation's custom user id with the Custom Data API's rules, language and
region to the installation; no route reads a profile back (decision 0024)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.test_campaigns import error
from tests.test_custom_data import _profile as _stored
from tests.test_sdk_api import installation, register
from tests.test_web_sdk_server import EVIL, SHOP, allow, preflight

EVERY_TYPE = {
    "plan": {"type": "string", "value": "premium"},
    "visits": {"type": "integer", "value": 42},
    "score": {"type": "float", "value": 3},  # a float JSON writes as 3 (JSON.stringify(3.0))
    "ratio": {"type": "float", "value": 0.25},
    "optin": {"type": "boolean", "value": True},
    "signed_up": {"type": "date", "value": "2026-11-23T10:00:00.250"},
    "home": {"type": "url", "value": "https://shop.example/u/42"},
}


def _url(app: ClientApp, install_id: str, suffix: str) -> str:
    return f"/sdk/v1/{app.api_key}/installations/{install_id}{suffix}"


async def _identified(api: httpx.AsyncClient, app: ClientApp, custom_id: str | None) -> str:
    """A new installation of `app`, with `custom_id` attached (None: anonymous)."""
    install_id = str(uuid.uuid4())
    fields = {} if custom_id is None else {"custom_id": custom_id}
    assert (await register(api, app, install_id, language="fr", **fields)).status_code == 200
    return install_id


async def _edit(
    api: httpx.AsyncClient, app: ClientApp, install_id: str, body: Any, **kwargs: Any
) -> httpx.Response:
    return await api.post(_url(app, install_id, "/profile/edits"), json=body, **kwargs)


class TestEdits:
    async def test_every_type_lands_with_its_kind_and_reads_back_typed(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        install_id = await _identified(api, web_app, "user-42")
        answer = await _edit(
            api,
            web_app,
            install_id,
            {"attributes": EVERY_TYPE, "tags": {"interests": ["sport", "cinema"]}},
        )
        assert answer.status_code == 200, answer.text

        stored = await _stored(runtime, web_app, "user-42")
        assert stored["attributes"] == {
            "plan": ("string", "premium", None),
            "visits": ("integer", None, 42.0),
            "score": ("float", None, 3.0),
            "ratio": ("float", None, 0.25),
            "optin": ("boolean", None, 1.0),
            "signed_up": ("date", "2026-11-23T10:00:00.250000+00:00", 1795428000.25),
            "home": ("url", "https://shop.example/u/42", None),
        }
        assert stored["tags"] == {"interests": {"cinema", "sport"}}
        # The custom id it edited, and no more: the profile is never answered.
        assert answer.json() == {"custom_id": "user-42", "accepted": 8}

    async def test_removals_and_tag_changes(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        install_id = await _identified(api, web_app, "user-7")
        first = {
            "attributes": {"plan": EVERY_TYPE["plan"], "visits": EVERY_TYPE["visits"]},
            "tags": {"interests": ["sport", "golf"], "colours": ["red"], "sizes": ["m"]},
        }
        assert (await _edit(api, web_app, install_id, first)).status_code == 200
        second = {
            "attributes": {"plan": None, "never_set": None},
            "tags": {
                "interests": {"$add": ["cinema"], "$remove": ["golf"]},
                "colours": None,
                "sizes": ["l", "xl"],
            },
        }
        assert (await _edit(api, web_app, install_id, second)).status_code == 200
        stored = await _stored(runtime, web_app, "user-7")
        assert stored == {
            "attributes": {"visits": ("integer", None, 42.0)},
            "tags": {"interests": {"cinema", "sport"}, "sizes": {"l", "xl"}},
        }

    async def test_the_profile_is_the_custom_ids_whichever_installation_or_api_wrote_it(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        phone = await _identified(api, web_app, "shared")
        laptop = await _identified(api, web_app, "shared")
        body = {"attributes": {"plan": EVERY_TYPE["plan"]}}
        assert (await _edit(api, web_app, phone, body)).status_code == 200
        rest = await api.post(
            f"/1.0/{web_app.api_key}/data/users/shared",
            headers=web_app.headers(),
            json={"values": {"url(u.site)": "https://a.example", "ut.likes": ["tea"]}},
        )
        assert rest.status_code == 200, rest.text
        tags = {"tags": {"likes": {"$add": ["cake"]}}}
        assert (await _edit(api, web_app, laptop, tags)).status_code == 200
        assert await _stored(runtime, web_app, "shared") == {
            "attributes": {
                "plan": ("string", "premium", None),
                "site": ("url", "https://a.example", None),
            },
            "tags": {"likes": {"cake", "tea"}},
        }

    async def test_language_and_region_update_the_installation_without_a_custom_id(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        install_id = await _identified(api, web_app, None)
        answer = await _edit(api, web_app, install_id, {"language": "de-AT", "region": "at"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"custom_id": None, "accepted": 2}
        stored = await installation(runtime, web_app, install_id)
        assert stored is not None
        assert (stored.language, stored.region) == ("de-AT", "AT")
        cleared = await _edit(api, web_app, install_id, {"region": None})
        assert cleared.status_code == 200
        stored = await installation(runtime, web_app, install_id)
        assert stored is not None
        assert (stored.language, stored.region) == ("de-AT", None)


class TestRefusals:
    async def test_an_installation_without_a_custom_id_is_told_to_identify_first(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        install_id = await _identified(api, web_app, None)
        body = {"attributes": {"plan": EVERY_TYPE["plan"]}, "language": "de"}
        message = error(await _edit(api, web_app, install_id, body), 403, 12)
        assert "no custom user id: identify the user first" in message
        stored = await installation(runtime, web_app, install_id)
        assert stored is not None
        assert stored.language == "fr"  # the language of the refused edit was not applied
        tags_only = {"tags": {"interests": {"$add": ["sport"]}}}
        error(await _edit(api, web_app, install_id, tags_only), 403, 12)

    @pytest.mark.parametrize(
        ("edit", "code", "named"),
        [
            (
                {"attributes": {"plan": {"type": "string", "value": "x" * 65}}},
                31,
                "attributes.plan.value: strings have at most 64",
            ),
            ({"attributes": {"Plan": EVERY_TYPE["plan"]}}, 31, "attributes.Plan: names use a-z"),
            (
                {"attributes": {"x" * 31: EVERY_TYPE["plan"]}},
                31,
                "names use a-z, 0-9 and _, at most 30",
            ),
            (
                {"attributes": {"visits": {"type": "integer", "value": "42"}}},
                31,
                "attributes.visits.value: an integer",
            ),
            (
                {"attributes": {"visits": {"type": "integer", "value": 4.5}}},
                31,
                "attributes.visits.value: an integer",
            ),
            (
                {"attributes": {"optin": {"type": "boolean", "value": 1}}},
                31,
                "attributes.optin.value: true or false",
            ),
            (
                {"attributes": {"ratio": {"type": "float", "value": True}}},
                31,
                "attributes.ratio.value: a number",
            ),
            (
                {"attributes": {"plan": {"type": "string", "value": 3}}},
                31,
                "attributes.plan.value: a string",
            ),
            (
                {"attributes": {"when": {"type": "date", "value": "soon"}}},
                31,
                "attributes.when.value: a Unix time",
            ),
            (
                {"attributes": {"when": {"type": "date", "value": "2026-11-23T10:00:00Z"}}},
                31,
                "attributes.when.value",
            ),
            (
                {"attributes": {"home": {"type": "url", "value": "shop.example"}}},
                31,
                "attributes.home.value: a URL",
            ),
            (
                {
                    "attributes": {
                        "home": {"type": "url", "value": "https://a.example/" + "x" * 2048}
                    }
                },
                31,
                "attributes.home.value: a URL",
            ),
            ({"attributes": {"plan": {"type": "text", "value": "x"}}}, 31, "attributes.plan.type"),
            ({"attributes": {"plan": {"type": "string"}}}, 30, "attributes.plan.value is required"),
            (
                {"attributes": {"plan": {"type": "string", "value": "x", "kind": "y"}}},
                31,
                "attributes.plan.kind",
            ),
            (
                {"attributes": {"plan": {"type": "string", "value": "a\x00"}}},
                31,
                "attributes.plan.value: contains NUL",
            ),
            (
                {"attributes": {"n": {"type": "integer", "value": 2**64}}},
                31,
                "attributes.n.value: is beyond",
            ),
            (
                {"attributes": {f"a{i}": None for i in range(101)}},
                31,
                "attributes: Dictionary should have at most 100",
            ),
            (
                {"tags": {"interests": []}},
                31,
                "tags.interests: a tag collection cannot be an empty list",
            ),
            (
                {"tags": {"interests": ["x" * 65]}},
                31,
                "tags.interests: tags are non-empty strings of at most 64",
            ),
            (
                {"tags": {"interests": [f"t{i}" for i in range(26)]}},
                31,
                "tags.interests: at most 25 tags",
            ),
            ({"tags": {"interests": {"$put": ["a"]}}}, 31, "tags.interests: a list of tags or"),
            ({"tags": {"bad-name": ["a"]}}, 31, "tags.bad-name: names use a-z"),
            ({"language": "not a language"}, 31, "language"),
            # Well formed but longer than the installation keeps (16): PostgreSQL refused it
            # with a 500 (found by the API fuzzing).
            ({"language": "oFd_vk3RHIiK-flLZ_Cb"}, 31, "language"),
            ({"region": "FRA"}, 31, "region"),
            ({"email": "a@b.example"}, 31, "email"),
            ({}, 31, "nothing to edit"),
            ([], 32, "the body must be a JSON object"),
        ],
    )
    async def test_bad_edits_are_400_naming_the_field_and_nothing_is_applied(
        self,
        api: httpx.AsyncClient,
        web_app: ClientApp,
        runtime: Runtime,
        edit: Any,
        code: int,
        named: str,
    ) -> None:
        install_id = await _identified(api, web_app, "careful")
        before = {"attributes": {"plan": EVERY_TYPE["plan"]}, "tags": {"interests": ["sport"]}}
        assert (await _edit(api, web_app, install_id, before)).status_code == 200
        # Good edits ride along with the bad one: none of them is applied.
        body = edit
        if isinstance(edit, dict):
            good = {"keep": {"type": "integer", "value": 1}, "plan": None}
            body = {
                **edit,
                "attributes": {**good, **edit.get("attributes", {})},
                "tags": {"other": ["x"], **edit.get("tags", {})},
                "language": edit.get("language", "de"),
            }
            if edit == {}:
                body = {}
        message = error(await _edit(api, web_app, install_id, body), 400, code)
        assert named in message, message
        assert await _stored(runtime, web_app, "careful") == {
            "attributes": {"plan": ("string", "premium", None)},
            "tags": {"interests": {"sport"}},
        }
        stored = await installation(runtime, web_app, install_id)
        assert stored is not None
        assert stored.language == "fr"

    async def test_unknown_installation_key_and_oversized_body(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        body = {"attributes": {"plan": EVERY_TYPE["plan"]}}
        error(await _edit(api, web_app, "ghost", body), 404, 20)
        error(await api.post("/sdk/v1/NOPE/installations/x/profile/edits", json=body), 401, 10)
        install_id = await _identified(api, web_app, "big")
        huge = {"attributes": {"plan": {"type": "string", "value": "x" * (1024 * 1024)}}}
        assert "body: larger than 1024 KiB" in error(
            await _edit(api, web_app, install_id, huge), 400, 31
        )


class TestNoRead:
    async def test_no_sdk_route_answers_a_profile(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        """The app key is public and identify takes any custom id: a route answering the
        profile would hand anyone the data the company's systems keep on any user."""
        install_id = await _identified(api, web_app, "private")
        rest = await api.post(
            f"/1.0/{web_app.api_key}/data/users/private",
            headers=web_app.headers(),
            json={"values": {"u.lifetime_value": 1234.5}},
        )
        assert rest.status_code == 200
        for path in ("/profile", "/profile/edits"):
            read = await api.get(_url(web_app, install_id, path))
            assert read.status_code in (404, 405), read.text
            assert "1234.5" not in read.text
        edited = await _edit(api, web_app, install_id, {"tags": {"t": ["x"]}})
        assert "1234.5" not in edited.text


class TestFromAPage:
    async def test_allowed_origins_get_cors_and_others_are_refused_before_anything_runs(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        await allow(api, web_app, [SHOP])
        install_id = await _identified(api, web_app, "paged")
        url = _url(web_app, install_id, "/profile/edits")
        asked = await api.options(url, headers=preflight(SHOP, "POST"))
        assert asked.status_code == 204
        assert asked.headers["access-control-allow-origin"] == SHOP
        body = {"attributes": {"plan": EVERY_TYPE["plan"]}}
        edited = await _edit(api, web_app, install_id, body, headers={"Origin": SHOP})
        assert edited.status_code == 200
        assert edited.headers["access-control-allow-origin"] == SHOP

        other = {"attributes": {"plan": {"type": "string", "value": "free"}}}
        refused = await _edit(api, web_app, install_id, other, headers={"Origin": EVIL})
        assert "may not call the SDK API" in error(refused, 403, 12)
        stored = await _stored(runtime, web_app, "paged")
        assert stored["attributes"] == {"plan": ("string", "premium", None)}
        assert (await api.options(url, headers=preflight(EVIL, "POST"))).status_code == 403
