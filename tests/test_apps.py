"""Tenancy and keys: the CLI, the admin API, hashed keys, secrets that never come back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text, update

from clarion.apps.models import App
from clarion.apps.service import KeyCache, authenticate_app, authenticate_company
from clarion.db import transaction
from clarion.errors import AuthenticationInvalidError
from clarion.runtime import Runtime
from tests.conftest import ClientApp, new_app
from tests.support.clock import Clock


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clarion.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


class TestCli:
    def test_apps_create_prints_keys_once_and_creates_the_company_first(
        self, tmp_path: Path
    ) -> None:
        env = {
            "CLARION_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "CLARION_VAR_DIR": str(tmp_path),
        }
        first = run_cli("apps", "create", "--name", "Shop", "--platform", "ios", env=env)
        assert first.returncode == 0, first.stderr
        created = json.loads(first.stdout)
        assert len(created["rest_api_key"]) == 32
        assert created["rest_api_key"].islower()
        assert len(created["api_key"]) == 32
        assert created["dev_api_key"].startswith("DEV")
        assert len(created["dev_api_key"]) == 30
        second = json.loads(
            run_cli("apps", "create", "--name", "Shop", "--platform", "web", env=env).stdout
        )
        assert second["rest_api_key"] is None  # the company exists already
        assert second["vapid_public_key"]
        listed = run_cli("apps", "list", env=env).stdout
        assert created["api_key"] not in listed
        assert "dev_api_key" not in listed
        database = (tmp_path / "cli.db").read_bytes()
        assert created["api_key"].encode() not in database  # only hashes at rest
        assert created["rest_api_key"].encode() not in database

    def test_bad_platform_is_a_clear_error(self, tmp_path: Path) -> None:
        env = {"CLARION_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
        result = run_cli("apps", "create", "--name", "X", "--platform", "symbian", env=env)
        assert result.returncode != 0
        assert "symbian" in result.stderr


class TestAdminApi:
    async def test_create_list_and_rotate(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        headers = ios_app.headers()
        created = await api.post(
            "/admin/v1/apps", headers=headers, json={"name": "Droid", "platform": "android"}
        )
        assert created.status_code == 201
        body = created.json()
        assert body["api_key"]
        assert body["dev_api_key"]
        assert body["rest_api_key"] is None
        listed = (await api.get("/admin/v1/apps", headers=headers)).json()
        assert {a["name"] for a in listed} == {"test ios", "Droid"}
        assert all("api_key" not in a for a in listed)

        before = await api.put(f"/sdk/v1/{body['api_key']}/installations/i", json={})
        assert before.status_code == 200  # and the key's lookup is now cached
        rotated = await api.post(f"/admin/v1/apps/{body['id']}/keys/rotate", headers=headers)
        new_key = rotated.json()["api_key"]
        old = await api.put(f"/sdk/v1/{body['api_key']}/installations/i", json={})
        assert old.status_code == 401
        fresh = await api.put(f"/sdk/v1/{new_key}/installations/i", json={})
        assert fresh.status_code == 200

    async def test_credentials_are_validated_stored_encrypted_and_never_returned(
        self, api: httpx.AsyncClient, runtime: Runtime, sim_control: httpx.Client
    ) -> None:
        app = await new_app(runtime, None, "ios", configure=False)
        key = sim_control.post("/_sim/apns/keys", json={}).json()
        creds = {
            "key_id": key["key_id"],
            "team_id": key["team_id"],
            "private_key": key["private_key_pem"],
            "topic": "com.example.app",
        }
        response = await api.put(
            f"/admin/v1/apps/{app.app_id}/credentials/apns", headers=app.headers(), json=creds
        )
        assert response.status_code == 200
        assert response.json()["has_apns_credentials"] is True
        assert "BEGIN" not in response.text
        async with runtime.sessions() as session:
            stored = await session.scalar(select(App).where(App.id == app.app_id))
            assert stored is not None
            assert stored.apns_credentials is not None
            assert "BEGIN PRIVATE KEY" not in stored.apns_credentials

        not_a_key = await api.put(
            f"/admin/v1/apps/{app.app_id}/credentials/apns",
            headers=app.headers(),
            json={**creds, "private_key": "hello"},
        )
        assert (not_a_key.status_code, not_a_key.json()["code"]) == (400, 31)
        wrong_platform = await api.put(
            f"/admin/v1/apps/{app.app_id}/credentials/fcm",
            headers=app.headers(),
            json={"service_account": {}},
        )
        assert (wrong_platform.status_code, wrong_platform.json()["code"]) == (400, 31)

    async def test_a_company_sees_only_its_apps(
        self, api: httpx.AsyncClient, runtime: Runtime
    ) -> None:
        mine = await new_app(runtime, None, "ios")
        theirs = await new_app(runtime, None, "android")
        seen = await api.get(f"/admin/v1/apps/{theirs.app_id}", headers=mine.headers())
        assert (seen.status_code, seen.json()["code"]) == (404, 20)
        listed = (await api.get("/admin/v1/apps", headers=mine.headers())).json()
        assert [a["id"] for a in listed] == [mine.app_id]
        unauthenticated = await api.get("/admin/v1/apps")
        assert (unauthenticated.status_code, unauthenticated.json()["code"]) == (401, 10)

    async def test_keys_are_hashed_in_the_database(
        self, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        async with runtime.sessions() as session:
            dump = " ".join(
                str(row)
                for row in (await session.execute(text("SELECT * FROM apps"))).all()
                + (await session.execute(text("SELECT * FROM companies"))).all()
            )
        assert ios_app.api_key not in dump
        assert ios_app.dev_api_key not in dump
        assert ios_app.rest_key not in dump


class TestKeyCache:
    async def test_a_key_changed_elsewhere_stops_working_once_its_entry_expires(
        self, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        # As when another process rotates the key: this process's cache is not told. Monotonic
        # time starts at 0, as on a machine just booted.
        clock = Clock(datetime(2030, 6, 1, tzinfo=UTC))
        cache = KeyCache(ttl=60, clock=clock)
        access = await authenticate_app(runtime.sessions, api_key=ios_app.api_key, cache=cache)
        assert (access.app_id, access.is_dev) == (ios_app.app_id, False)
        async with transaction(runtime.sessions) as session:
            await session.execute(
                update(App).where(App.id == ios_app.app_id).values(live_key_hash="rotated")
            )
        clock.advance(timedelta(seconds=60))
        cached = await authenticate_app(runtime.sessions, api_key=ios_app.api_key, cache=cache)
        assert cached == access
        clock.advance(timedelta(milliseconds=1))
        with pytest.raises(AuthenticationInvalidError):
            await authenticate_app(runtime.sessions, api_key=ios_app.api_key, cache=cache)

    async def test_a_cached_key_still_answers_only_within_its_company(
        self, runtime: Runtime, ios_app: ClientApp, sim_control: httpx.Client
    ) -> None:
        other = await new_app(runtime, sim_control, "ios")
        cache = KeyCache(ttl=60)
        sessions = runtime.sessions
        own = await authenticate_company(sessions, rest_key=ios_app.rest_key, cache=cache)
        foreign = await authenticate_company(sessions, rest_key=other.rest_key, cache=cache)
        access = await authenticate_app(sessions, api_key=ios_app.api_key, cache=cache, company=own)
        assert access.app_id == ios_app.app_id
        with pytest.raises(AuthenticationInvalidError):  # now served from the cache
            await authenticate_app(sessions, api_key=ios_app.api_key, cache=cache, company=foreign)
