"""What the server does for the Web SDK in any site's pages (docs/web-sdk.md, "Serving and
allowed origins"): each web app's allowed origins, CORS on the SDK API (the in-app fetch's fast
path included), and the SDK's scripts."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from starlette.types import Receive, Scope, Send

from clarion.dashboard.models import Role
from clarion.inapp.api import FetchFastPath
from clarion.runtime import Runtime
from clarion.sdk.api import SdkCors
from clarion.sdk.models import Installation
from clarion.sdk.scripts import SCRIPTS_DIR
from tests.conftest import ClientApp
from tests.support.dashboard import sign_in_as
from tests.test_campaigns import error

SHOP = "https://shop.example"
EVIL = "https://evil.example"


async def allow(api: httpx.AsyncClient, app: ClientApp, origins: list[str]) -> httpx.Response:
    return await api.put(
        f"/admin/v1/apps/{app.app_id}/allowed-origins",
        headers=app.headers(),
        json={"allowed_origins": origins},
    )


async def installations(runtime: Runtime, app: ClientApp, install_id: str) -> int:
    async with runtime.sessions() as session:
        found = await session.scalar(
            select(func.count())
            .select_from(Installation)
            .where(Installation.app_id == app.app_id, Installation.install_id == install_id)
        )
    return int(found or 0)


class TestAllowedOrigins:
    async def test_set_normalised_and_shown_with_the_app(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        answer = await allow(
            api,
            web_app,
            [
                "HTTPS://Shop.Example:443/",
                "http://localhost:3000",
                "http://127.0.0.1:8080",
                "https://bücher.example",
                "https://shop.example",  # the first one again, once normalised
                "http://shop.example:80",
                "https://[::1]:8443",
            ],
        )
        assert answer.status_code == 200, answer.text
        expected = [
            SHOP,
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "https://xn--bcher-kva.example",
            "http://shop.example",
            "https://[::1]:8443",
        ]
        assert answer.json()["allowed_origins"] == expected
        got = await api.get(f"/admin/v1/apps/{web_app.app_id}", headers=web_app.headers())
        assert got.json()["allowed_origins"] == expected
        listed = await api.get("/admin/v1/apps", headers=web_app.headers())
        assert [a["allowed_origins"] for a in listed.json()] == [expected]
        cleared = await allow(api, web_app, [])
        assert cleared.json()["allowed_origins"] == []

    async def test_a_new_app_allows_no_origin(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        got = await api.get(f"/admin/v1/apps/{web_app.app_id}", headers=web_app.headers())
        assert got.json()["allowed_origins"] == []

    @pytest.mark.parametrize(
        ("origin", "why"),
        [
            ("shop.example", "must be http:// or https://"),
            ("ftp://shop.example", "must be http:// or https://"),
            ("https://", "must be http:// or https://"),
            ("null", "must be http:// or https://"),
            ("https://shop.example/shop", "no path, query or fragment"),
            ("https://shop.example?a=1", "no path, query or fragment"),
            ("https://shop.example#top", "no path, query or fragment"),
            ("https://shop.example?", "no path, query or fragment"),
            ("https://user:secret@shop.example", "no user name or password"),
            ("https://*.shop.example", "wildcards are not allowed"),
            ("http://localhost:*", "wildcards are not allowed"),
            ("*", "wildcards are not allowed"),
            ("https://shop.example:99999", "not an origin"),
            ("https://shop.example:port", "not an origin"),
            ("https://shop.example:0", "port 0"),
            ("https://sh op.example", "no spaces"),
            ("https://-shop-.example", "not a host name"),
            ("https://shop..example", "not a host name"),
            ("https://shop_1.example", "not a host name"),
            ("https://" + "a" * 300 + ".example", "at most 300 characters"),
            ("https://shop.example\x00", "allowed_origins.0"),
            (5, "allowed_origins.0"),
            (None, "allowed_origins.0"),
        ],
    )
    async def test_bad_origins_are_refused_naming_the_entry(
        self, api: httpx.AsyncClient, web_app: ClientApp, origin: Any, why: str
    ) -> None:
        await allow(api, web_app, [SHOP])
        refused = await allow(api, web_app, [SHOP, origin])
        message = error(refused, 400, 31)
        assert message.startswith("MALFORMED_PARAMETER: allowed_origins.1"), message
        assert why.replace("allowed_origins.0", "allowed_origins.1") in message, message
        got = await api.get(f"/admin/v1/apps/{web_app.app_id}", headers=web_app.headers())
        assert got.json()["allowed_origins"] == [SHOP]  # unchanged

    @pytest.mark.parametrize(
        ("body", "status", "code", "why"),
        [
            ({}, 400, 30, "allowed_origins is required"),
            ({"allowed_origins": None}, 400, 30, "allowed_origins is required"),
            ({"allowed_origins": SHOP}, 400, 31, "allowed_origins:"),
            ({"allowed_origins": {"a": SHOP}}, 400, 31, "allowed_origins:"),
            (
                {"allowed_origins": [f"https://s{i}.example" for i in range(51)]},
                400,
                31,
                "allowed_origins: List should have at most 50 items",
            ),
            ({"allowed_origins": [SHOP], "origins": []}, 400, 31, "origins"),
            ([SHOP], 400, 32, "JSON object"),
        ],
    )
    async def test_bad_bodies_are_refused_naming_the_field(
        self,
        api: httpx.AsyncClient,
        web_app: ClientApp,
        body: Any,
        status: int,
        code: int,
        why: str,
    ) -> None:
        refused = await api.put(
            f"/admin/v1/apps/{web_app.app_id}/allowed-origins",
            headers=web_app.headers(),
            json=body,
        )
        assert why in error(refused, status, code)

    async def test_fifty_origins_are_accepted(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        answer = await allow(api, web_app, [f"https://s{i}.example" for i in range(50)])
        assert len(answer.json()["allowed_origins"]) == 50

    async def test_only_for_web_apps_and_only_with_the_companys_key(
        self, api: httpx.AsyncClient, web_app: ClientApp, ios_app: ClientApp
    ) -> None:
        native = await allow(api, ios_app, [SHOP])
        assert "only web apps" in error(native, 400, 31)
        other_company = await api.put(
            f"/admin/v1/apps/{web_app.app_id}/allowed-origins",
            headers=ios_app.headers(),
            json={"allowed_origins": [SHOP]},
        )
        error(other_company, 404, 20)
        no_key = await api.put(
            f"/admin/v1/apps/{web_app.app_id}/allowed-origins", json={"allowed_origins": [SHOP]}
        )
        error(no_key, 401, 10)


def preflight(origin: str, method: str = "PUT") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "content-type",
    }


class TestCors:
    async def test_a_preflight_from_an_allowed_origin(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        await allow(api, web_app, [SHOP, "http://localhost:3000"])
        for key in (web_app.api_key, web_app.dev_api_key):
            answer = await api.options(
                f"/sdk/v1/{key}/installations/{uuid.uuid4()}", headers=preflight(SHOP)
            )
            assert answer.status_code == 204, answer.text
            assert answer.content == b""
            headers = answer.headers
            assert headers["access-control-allow-origin"] == SHOP
            assert headers["vary"] == "Origin"
            assert headers["access-control-allow-methods"] == "GET, PUT, POST, DELETE"
            assert headers["access-control-allow-headers"] == "Content-Type, If-None-Match"
            assert headers["access-control-max-age"] == "600"
            assert headers["access-control-expose-headers"] == "ETag"
        local = await api.options(
            f"/sdk/v1/{web_app.api_key}/installations/x/inapp-messages",
            headers=preflight("http://localhost:3000", "GET"),
        )
        assert local.status_code == 204
        assert local.headers["access-control-allow-origin"] == "http://localhost:3000"

    @pytest.mark.parametrize(
        "origin",
        [EVIL, "http://shop.example", "https://shop.example:8443", "null", "https://SHOP.example"],
    )
    async def test_a_preflight_from_another_origin_is_refused_saying_where_to_allow_it(
        self, api: httpx.AsyncClient, web_app: ClientApp, origin: str
    ) -> None:
        await allow(api, web_app, [SHOP])
        refused = await api.options(
            f"/sdk/v1/{web_app.api_key}/installations/{uuid.uuid4()}", headers=preflight(origin)
        )
        message = error(refused, 403, 12)
        assert f"the origin {origin} may not call the SDK API" in message
        assert "allowed origins" in message
        assert "/admin/v1/apps/{app_id}/allowed-origins" in message
        assert "access-control-allow-methods" not in refused.headers

    async def test_a_preflight_with_an_unknown_key_is_a_401(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        refused = await api.options("/sdk/v1/NOSUCHKEY/webpush/vapid-key", headers=preflight(SHOP))
        error(refused, 401, 10)
        called = await api.get("/sdk/v1/NOSUCHKEY/webpush/vapid-key", headers={"Origin": SHOP})
        error(called, 401, 10)

    async def test_calls_from_an_allowed_origin_carry_the_cors_headers(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        await allow(api, web_app, [SHOP])
        install_id = str(uuid.uuid4())
        base = f"/sdk/v1/{web_app.api_key}"
        answers = [
            await api.put(
                f"{base}/installations/{install_id}",
                json={"language": "fr"},
                headers={"Origin": SHOP},
            ),
            await api.get(f"{base}/webpush/vapid-key", headers={"Origin": SHOP}),
            await api.post(
                f"{base}/installations/{install_id}/events",
                json={"events": [{"name": "viewed"}]},
                headers={"Origin": SHOP},
            ),
            await api.get(f"{base}/webpush/nope", headers={"Origin": SHOP}),  # errors too
        ]
        assert [a.status_code for a in answers] == [200, 200, 202, 404], answers[-1].text
        for answer in answers:
            assert answer.headers["access-control-allow-origin"] == SHOP
            assert answer.headers["access-control-expose-headers"] == "ETag"
            assert "Origin" in answer.headers["vary"]
        assert await installations(runtime, web_app, install_id) == 1

    async def test_calls_from_another_origin_are_refused_and_write_nothing(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        await allow(api, web_app, [SHOP])
        install_id = str(uuid.uuid4())
        refused = await api.put(
            f"/sdk/v1/{web_app.api_key}/installations/{install_id}",
            json={"language": "fr"},
            headers={"Origin": EVIL},
        )
        assert f"the origin {EVIL} may not call" in error(refused, 403, 12)
        # Readable by the refused page, so that the SDK's debug mode can tell why.
        assert refused.headers["access-control-allow-origin"] == EVIL
        assert await installations(runtime, web_app, install_id) == 0

    async def test_an_origin_removed_is_refused_at_once(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        await allow(api, web_app, [SHOP])
        url = f"/sdk/v1/{web_app.api_key}/webpush/vapid-key"
        assert (await api.get(url, headers={"Origin": SHOP})).status_code == 200  # cached
        await allow(api, web_app, [EVIL])
        error(await api.get(url, headers={"Origin": SHOP}), 403, 12)
        assert (await api.get(url, headers={"Origin": EVIL})).status_code == 200

    async def test_calls_without_origin_are_unchanged(
        self, api: httpx.AsyncClient, web_app: ClientApp, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        install_id = str(uuid.uuid4())
        for app in (web_app, ios_app):  # no origin allowed for either
            answer = await api.put(f"/sdk/v1/{app.api_key}/installations/{install_id}", json={})
            assert answer.status_code == 200, answer.text
            assert not [h for h in answer.headers if h.startswith("access-control-")]
            assert "vary" not in answer.headers
        assert await installations(runtime, web_app, install_id) == 1
        # An OPTIONS without Origin is no preflight: the route's 405, as before.
        options = await api.options(f"/sdk/v1/{web_app.api_key}/webpush/vapid-key")
        error(options, 405, 20)

    async def test_other_routes_are_unaffected_by_origin(
        self, api: httpx.AsyncClient, web_app: ClientApp
    ) -> None:
        answer = await api.get(
            f"/admin/v1/apps/{web_app.app_id}", headers={**web_app.headers(), "Origin": EVIL}
        )
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers


class TestFetchFastPath:
    async def test_the_fast_paths_answers_carry_cors_and_refuse_other_origins(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        """The fast path answers inside SdkCors: with a downstream that fails if reached, the
        answers come from FetchFastPath itself."""
        await allow(api, web_app, [SHOP])
        install_id = str(uuid.uuid4())
        registered = await api.put(f"/sdk/v1/{web_app.api_key}/installations/{install_id}", json={})
        assert registered.status_code == 200  # the key is now in the process's KeyCache

        async def unreachable(scope: Scope, receive: Receive, send: Send) -> None:
            raise AssertionError(f"the fast path did not answer {scope['path']}")

        stack = SdkCors(
            FetchFastPath(unreachable, key_cache=runtime.key_cache, feed=runtime.inapp),
            key_cache=runtime.key_cache,
            sessions=runtime.sessions,
        )
        url = f"/sdk/v1/{web_app.api_key}/installations/{install_id}/inapp-messages"
        transport = httpx.ASGITransport(app=stack)
        async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as fast:
            full = await fast.get(url, headers={"Origin": SHOP})
            assert full.status_code == 200, full.text
            assert full.json()["messages"] == []
            assert full.headers["access-control-allow-origin"] == SHOP
            assert full.headers["access-control-expose-headers"] == "ETag"
            unchanged = await fast.get(
                url, headers={"Origin": SHOP, "If-None-Match": full.headers["etag"]}
            )
            assert unchanged.status_code == 304
            assert unchanged.headers["access-control-allow-origin"] == SHOP
            refused = await fast.get(url, headers={"Origin": EVIL})
            error(refused, 403, 12)
            native = await fast.get(url)
            assert native.status_code == 200
            assert "access-control-allow-origin" not in native.headers


def script(name: str) -> bytes:
    return (SCRIPTS_DIR / name).read_bytes()


def digest(name: str) -> str:
    return hashlib.sha256(script(name)).hexdigest()[:16]


class TestScripts:
    @pytest.mark.parametrize("name", ["clarion.js", "clarion-sw.js"])
    async def test_stable_path(self, api: httpx.AsyncClient, name: str) -> None:
        answer = await api.get(f"/sdk/web/v1/{name}")  # no key, no header
        assert answer.status_code == 200
        assert answer.content == script(name)
        headers = answer.headers
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert headers["cache-control"] == "public, max-age=3600"
        assert headers["etag"] == f'"{digest(name)}"'
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["access-control-allow-origin"] == "*"
        assert headers["content-length"] == str(len(script(name)))
        worker = headers.get("service-worker-allowed")
        assert worker == ("/" if name == "clarion-sw.js" else None)

    @pytest.mark.parametrize("name", ["clarion.js", "clarion-sw.js"])
    async def test_revalidated_with_the_etag(self, api: httpx.AsyncClient, name: str) -> None:
        etag = f'"{digest(name)}"'
        for sent in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            answer = await api.get(f"/sdk/web/v1/{name}", headers={"If-None-Match": sent})
            assert answer.status_code == 304, sent
            assert answer.content == b""
            assert answer.headers["etag"] == etag
            assert answer.headers["cache-control"] == "public, max-age=3600"
        changed = await api.get(f"/sdk/web/v1/{name}", headers={"If-None-Match": '"other"'})
        assert changed.status_code == 200
        assert changed.content == script(name)

    @pytest.mark.parametrize("name", ["clarion.js", "clarion-sw.js"])
    async def test_hashed_path_is_immutable(self, api: httpx.AsyncClient, name: str) -> None:
        stem = name.removesuffix(".js")
        answer = await api.get(f"/sdk/web/v1/{stem}.{digest(name)}.js")
        assert answer.status_code == 200
        assert answer.content == script(name)
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
        assert answer.headers["etag"] == f'"{digest(name)}"'

    @pytest.mark.parametrize(
        "path",
        [
            "/sdk/web/v1/nope.js",
            "/sdk/web/v1/clarion.0000000000000000.js",
            "/sdk/web/v2/clarion.js",
            "/sdk/web/v1/",
            "/sdk/web/v1/" + "a" * 65,
        ],
    )
    async def test_unknown_paths_are_404(self, api: httpx.AsyncClient, path: str) -> None:
        answer = await api.get(path)
        assert answer.status_code in (400, 404), answer.text
        assert answer.json()["code"] in (20, 31)
        if not path.endswith("a" * 65):
            assert answer.status_code == 404


class TestDashboard:
    async def test_an_admin_sets_the_origins_on_the_settings_page(
        self, api: httpx.AsyncClient, web_app: ClientApp, runtime: Runtime
    ) -> None:
        login = await sign_in_as(runtime, app_id=web_app.app_id, role=Role.ADMIN)
        login.use(api)
        path = f"/dashboard/apps/{web_app.app_id}/allowed-origins"
        saved = await api.post(
            path,
            data={"csrf_token": login.csrf, "allowed_origins": " HTTPS://Shop.Example/\n\n"},
        )
        assert saved.status_code == 200, saved.text
        assert "Allowed origins saved." in saved.text
        page = await api.get(f"/dashboard/apps/{web_app.app_id}/settings")
        assert f">{SHOP}</textarea>" in page.text
        got = await api.get(f"/admin/v1/apps/{web_app.app_id}", headers=web_app.headers())
        assert got.json()["allowed_origins"] == [SHOP]
        refused = await api.post(
            path,
            data={"csrf_token": login.csrf, "allowed_origins": f"{SHOP}\nhttps://*.example"},
        )
        assert refused.status_code == 400
        assert "allowed_origins.1: wildcards are not allowed" in refused.text
        assert "https://*.example</textarea>" in refused.text  # kept for correction
        got = await api.get(f"/admin/v1/apps/{web_app.app_id}", headers=web_app.headers())
        assert got.json()["allowed_origins"] == [SHOP]

    async def test_only_web_apps_show_the_section_and_viewers_only_read_it(
        self, api: httpx.AsyncClient, web_app: ClientApp, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await allow(api, web_app, [SHOP])
        (await sign_in_as(runtime, app_id=web_app.app_id, role=Role.VIEWER)).use(api)
        page = await api.get(f"/dashboard/apps/{web_app.app_id}/settings")
        assert f"<li><code>{SHOP}</code></li>" in page.text
        assert "/allowed-origins" not in page.text
        (await sign_in_as(runtime, app_id=ios_app.app_id, role=Role.ADMIN)).use(api)
        native = await api.get(f"/dashboard/apps/{ios_app.app_id}/settings")
        assert "Allowed origins" not in native.text
