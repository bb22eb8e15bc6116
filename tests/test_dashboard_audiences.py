"""Dashboard, Audiences: custom audiences with their sizes, the CSV upload (roles, CSRF, bad
files), and the app's import sources and export destinations with their run history."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from clarion.dashboard.models import Role
from clarion.dashboard.web import PAGE_SIZE
from clarion.db import transaction, utcnow
from clarion.exports import service as exports
from clarion.exports.schemas import DestinationIn
from clarion.exports.tasks import ExportRunner
from clarion.formats import wire_date
from clarion.imports import service as imports
from clarion.imports.idfile import MAX_LINE_BYTES
from clarion.imports.schemas import ImportSourceIn
from clarion.imports.tasks import ImportRunner
from clarion.runtime import Runtime
from tests.conftest import ClientApp, new_app
from tests.support.dashboard import DashboardLogin, sign_in_as
from tests.test_custom_audiences import put as put_audience
from tests.test_custom_audiences import url as audience_url

CSV = "text/csv"


async def signed_in(
    api: httpx.AsyncClient, runtime: Runtime, app: ClientApp, role: Role = Role.EDITOR
) -> DashboardLogin:
    login = await sign_in_as(runtime, app_id=app.app_id, role=role)
    login.use(api)
    return login


async def upload(
    api: httpx.AsyncClient,
    app: ClientApp,
    login: DashboardLogin | None,
    content: bytes,
    **params: str,
) -> httpx.Response:
    headers = {"Content-Type": CSV}
    if login is not None:
        headers["X-CSRF-Token"] = login.csrf
    return await api.post(
        f"/dashboard/apps/{app.app_id}/audiences/upload",
        params=params,
        content=content,
        headers=headers,
    )


async def size(api: httpx.AsyncClient, app: ClientApp, name: str) -> int | None:
    """The audience's nb_ids through the Custom Audience API, None if it does not exist."""
    response = await api.get(audience_url(app, name), headers=app.headers())
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    nb_ids: int = response.json()["nb_ids"]
    return nb_ids


def text(response: httpx.Response) -> str:
    """The page's text without tags, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.text)).split())


def row_of(response: httpx.Response, name: str) -> str:
    """The text of the table row that holds `name`."""
    for row in re.findall(r"<tr>(.*?)</tr>", response.text, re.S):
        shown = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", row)).split())
        if name in shown.split() or f"/{name}" in shown:
            return shown
    raise AssertionError(f"no row for {name!r} in {text(response)}")


class TestAudiencesPage:
    async def test_lists_the_apps_audiences_with_their_size_and_state(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        created = await put_audience(
            api, ios_app, "vip", {"type": "custom_ids", "description": "Best", "ids": ["a", "b"]}
        )
        assert created.status_code == 202, created.text
        await put_audience(
            api,
            ios_app,
            "idfa",
            {"type": "advertising_ids", "ids": [f"{'1' * 8}-1111-1111-1111-{'1' * 12}"]},
        )
        await signed_in(api, runtime, ios_app, Role.VIEWER)

        response = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences")

        assert response.status_code == 200, response.text
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        vip = row_of(response, "vip")
        assert "Custom user ids" in vip
        assert " 2 " in f" {vip} "
        assert "APPLIED" in vip
        assert "Best" in vip
        assert "Advertising ids" in row_of(response, "idfa")
        assert 'aria-current="page">Audiences<' in response.text.replace("\n", "")
        # A viewer sees the list, not the upload form.
        assert "data-upload" not in response.text
        assert "Upload a CSV file" not in response.text

    async def test_editors_get_the_upload_form(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        await signed_in(api, runtime, ios_app, Role.EDITOR)

        response = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences")

        assert response.status_code == 200
        page = response.text
        assert f'data-upload="/dashboard/apps/{ios_app.app_id}/audiences/upload"' in page
        assert 'data-result="upload-result"' in page
        assert 'id="upload-result"' in page
        assert 'class="dropzone' in page
        assert "data-file-name" in page
        assert "<progress" in page
        for field in ("upload-name", "upload-type", "upload-delimiter", "upload-column"):
            assert f'<label for="{field}">' in page
            assert f'id="{field}"' in page
        assert "No custom audience yet." in page
        assert "<script>" not in page
        assert "style=" not in page

    async def test_the_list_is_paginated(
        self,
        api: httpx.AsyncClient,
        runtime: Runtime,
        ios_app: ClientApp,
    ) -> None:
        # One page and one audience more: newest first, the oldest is alone on page 2.
        names = ["first"] + [f"n{number:02d}" for number in range(PAGE_SIZE)]
        for name in names:
            await put_audience(api, ios_app, name, {"type": "custom_ids", "ids": ["x"]})
        await signed_in(api, runtime, ios_app, Role.VIEWER)

        one = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences")
        two = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences", params={"page": 2})

        assert f">n{PAGE_SIZE - 1:02d}<" in one.text
        assert ">n00<" in one.text
        assert ">first<" not in one.text
        assert 'href="?page=2"' in one.text
        assert ">first<" in two.text
        assert ">n00<" not in two.text
        assert 'href="?page=1"' in two.text
        assert 'href="?page=3"' not in two.text

    async def test_another_companys_app_is_not_found(
        self,
        api: httpx.AsyncClient,
        runtime: Runtime,
        ios_app: ClientApp,
        sim_control: httpx.Client,
    ) -> None:
        other = await new_app(runtime, sim_control, "android")
        await put_audience(api, other, "theirs", {"type": "custom_ids", "ids": ["x"]})
        login = await signed_in(api, runtime, ios_app, Role.ADMIN)

        for path in ("audiences", "audiences/imports", "audiences/exports"):
            response = await api.get(f"/dashboard/apps/{other.app_id}/{path}")
            assert response.status_code == 404, path
            assert "theirs" not in response.text
        refused = await upload(api, other, login, b"a\n", name="theirs")
        assert refused.status_code == 404
        assert await size(api, other, "theirs") == 1

    async def test_signing_in_is_required(self, api: httpx.AsyncClient, ios_app: ClientApp) -> None:
        response = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences")
        assert response.status_code == 303
        assert response.headers["location"].startswith("/dashboard/login?next=")


class TestUpload:
    async def test_an_editor_uploads_a_csv_and_sees_what_became_of_each_line(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        login = await signed_in(api, runtime, ios_app, Role.EDITOR)

        response = await upload(
            api,
            ios_app,
            login,
            b"custom_id\nu1\nu2\nu2\nnot valid\n",
            name="uploaded",
            type="custom_ids",
            header="true",
            delimiter=",",
            column="custom_id",
        )

        assert response.status_code == 200, response.text
        assert "<html" not in response.text  # a fragment, for the page's result area
        shown = text(response)
        assert "Audience uploaded now holds 2 ids." in shown
        assert "2 ids accepted (distinct)" in shown
        assert "5 lines read" in shown
        assert "1 ids rejected" in shown
        assert "5 not a valid custom id" in shown  # line 5, and why
        assert await size(api, ios_app, "uploaded") == 2
        listed = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences")
        assert "2" in row_of(listed, "uploaded").split()

    async def test_the_js_form_fields_are_taken_as_the_api_takes_them(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        """What static/app.js sends: every string field of the form, the checkbox's value."""
        login = await signed_in(api, runtime, ios_app, Role.ADMIN)
        idfa = "6f1c1c4e-2b44-4c09-9a53-0d8e5e7b1f10"

        response = await upload(
            api,
            ios_app,
            login,
            f"x\t{idfa}\ny\tnope\n".encode(),
            name="  tabbed  ",
            type="advertising_ids",
            delimiter="\t",
            column="2",
        )

        assert response.status_code == 200, response.text
        assert "Audience tabbed now holds 1 ids." in text(response)
        assert "2 not a valid advertising id" in text(response)
        assert await size(api, ios_app, "tabbed") == 1

    async def test_a_bad_file_answers_400_with_the_reason_and_keeps_the_members(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        login = await signed_in(api, runtime, ios_app, Role.EDITOR)
        assert (await upload(api, ios_app, login, b"a\nb\n", name="kept")).status_code == 200

        response = await upload(api, ios_app, login, b"c\nd|e\n", name="kept")

        assert response.status_code == 400
        assert "<html" not in response.text
        assert 'class="error" role="alert"' in response.text
        assert text(response) == (
            "MALFORMED_PARAMETER: file: line 2: mixed delimiters: '|' in a file delimited by ','"
        )
        long_line = b"c\n" + b" " * (MAX_LINE_BYTES + 1) + b"\nd\n"
        response = await upload(api, ios_app, login, long_line, name="kept")
        assert response.status_code == 400
        assert text(response).startswith(
            f"MALFORMED_PARAMETER: file: line 2: line longer than {MAX_LINE_BYTES} bytes"
        )
        assert await size(api, ios_app, "kept") == 2

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({}, "MISSING_PARAMETER: query.name is required"),
            ({"name": "   "}, "query.name: String should have at least 1 character"),
            ({"name": "n", "type": "emails"}, "query.type: Input should be 'custom_ids'"),
            ({"name": "n", "delimiter": ":"}, "query.delimiter: Input should be ','"),
            ({"name": "n", "column": ""}, "query.column: String should have at least 1"),
            ({"name": "n", "header": "maybe"}, "query.header: Input should be a valid boolean"),
        ],
    )
    async def test_bad_parameters_are_refused_as_the_api_refuses_them(
        self,
        params: dict[str, str],
        message: str,
        api: httpx.AsyncClient,
        runtime: Runtime,
        ios_app: ClientApp,
    ) -> None:
        login = await signed_in(api, runtime, ios_app, Role.EDITOR)

        response = await upload(api, ios_app, login, b"a\n", **params)

        assert response.status_code == 400
        assert message in text(response)
        assert await size(api, ios_app, "n") is None

    async def test_a_viewer_cannot_upload(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        await put_audience(api, ios_app, "same", {"type": "custom_ids", "ids": ["a"]})
        login = await signed_in(api, runtime, ios_app, Role.VIEWER)

        response = await upload(api, ios_app, login, b"x\ny\nz\n", name="same")
        created = await upload(api, ios_app, login, b"x\n", name="new")

        assert response.status_code == 403  # require_editor's ApiMisuseError (403/12)
        assert "<html" not in response.text
        assert "your role (viewer) cannot change anything" in text(response)
        assert created.status_code == 403
        assert await size(api, ios_app, "same") == 1
        assert await size(api, ios_app, "new") is None

    async def test_a_post_without_the_csrf_token_is_refused(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        await signed_in(api, runtime, ios_app, Role.ADMIN)

        response = await upload(api, ios_app, None, b"a\n", name="forged")
        wrong = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/audiences/upload",
            params={"name": "forged"},
            content=b"a\n",
            headers={"Content-Type": CSV, "X-CSRF-Token": "not-the-token"},
        )

        assert response.status_code == 403
        assert "this form expired or was sent from another site" in text(response)
        assert wrong.status_code == 403
        assert await size(api, ios_app, "forged") is None

    async def test_a_form_body_is_refused(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        login = await signed_in(api, runtime, ios_app, Role.EDITOR)

        response = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/audiences/upload",
            params={"name": "form"},
            files={"file": ("ids.csv", b"a\nb\n", CSV)},
            data={"csrf_token": login.csrf},
        )

        assert response.status_code == 400
        assert "send the file itself as the body" in text(response)
        assert await size(api, ios_app, "form") is None


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    return tmp_path


class TestImportsAndExports:
    async def test_import_sources_show_their_last_run_and_history_without_credentials(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp, local_root: Path
    ) -> None:
        folder = local_root / "imports" / str(ios_app.app_id) / "drop"
        folder.mkdir(parents=True)
        (folder / "a.csv").write_bytes(b"id\nu1\nu2\nnot valid\n")
        (folder / "b.csv").write_bytes(b"id\nu3\nu4|u5\n")
        async with transaction(runtime.sessions) as session:
            for body in (
                {"name": "crm", "url": f"file://{folder}", "audience_name": "from-crm"},
                {
                    "name": "remote",
                    "url": "sftp://files.example.com/out",
                    "audience_name": "from-sftp",
                    "credentials": {"username": "u", "password": "s3cret-pass"},
                    "enabled": False,
                },
            ):
                await imports.create_source(
                    session,
                    app_id=ios_app.app_id,
                    body=ImportSourceIn.model_validate({"id_type": "custom_ids", **body}),
                    box=runtime.box,
                    outbound=runtime.outbound,
                    now=utcnow(),
                )
        settings = runtime.settings.model_copy(
            update={"import_local_roots": [local_root / "imports"]}
        )
        runner = ImportRunner(runtime.sessions, settings, runtime.box)
        runs = await runner.run_source(app_id=ios_app.app_id, name="crm")
        assert sorted(run.status for run in runs) == ["failed", "succeeded"]
        await signed_in(api, runtime, ios_app, Role.VIEWER)

        listed = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences/imports")
        history = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences/imports/crm")
        remote = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences/imports/remote")

        assert listed.status_code == history.status_code == remote.status_code == 200
        crm = row_of(listed, "crm")
        assert "from-crm" in crm
        assert runs[-1].status in crm
        assert ("mixed delimiters" in crm) == (runs[-1].status == "failed")
        assert "no run yet" in row_of(listed, "remote")
        assert f'href="/dashboard/apps/{ios_app.app_id}/audiences/imports/crm"' in listed.text
        assert "Run now" not in listed.text  # viewers only look
        good = row_of(history, "a.csv")
        assert "succeeded" in good
        assert "4 2 1 2" in good
        assert "line 4: not a valid custom id" in good
        bad = row_of(history, "b.csv")
        assert "failed" in bad
        assert "line 3: mixed delimiters" in bad
        for page in (listed, remote):
            assert "s3cret-pass" not in page.text
        assert "stored, encrypted (never shown)" in text(remote)
        audiences = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences")
        assert "2" in row_of(audiences, "from-crm").split()

    async def test_run_now_makes_the_source_due_for_editors_only(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp
    ) -> None:
        later = utcnow() + timedelta(days=1)
        async with transaction(runtime.sessions) as session:
            await imports.create_source(
                session,
                app_id=ios_app.app_id,
                body=ImportSourceIn.model_validate(
                    {
                        "name": "crm",
                        "url": "s3://bucket/p",
                        "id_type": "custom_ids",
                        "audience_name": "a",
                    }
                ),
                box=runtime.box,
                outbound=runtime.outbound,
                now=later,
            )
        run_now = f"/dashboard/apps/{ios_app.app_id}/audiences/imports/crm/run"
        viewer = await signed_in(api, runtime, ios_app, Role.VIEWER)
        refused = await api.post(run_now, data={"csrf_token": viewer.csrf})
        assert refused.status_code == 403
        assert await next_poll(runtime, ios_app) == wire_date(later)

        editor = await signed_in(api, runtime, ios_app, Role.EDITOR)
        page = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences/imports/crm")
        assert f'action="{run_now}"' in page.text
        forged = await api.post(run_now, data={"csrf_token": "nope"})
        assert forged.status_code == 403
        response = await api.post(run_now, data={"csrf_token": editor.csrf})

        assert response.status_code == 303
        assert response.headers["location"].endswith("/audiences/imports/crm?notice=run")
        assert await next_poll(runtime, ios_app) < wire_date(later)
        shown = await api.get(response.headers["location"])
        assert "polled at a worker's next check" in text(shown)
        missing = await api.post(
            f"/dashboard/apps/{ios_app.app_id}/audiences/imports/nope/run",
            data={"csrf_token": editor.csrf},
        )
        assert missing.status_code == 404

    async def test_export_destinations_show_their_last_day_and_history(
        self, api: httpx.AsyncClient, runtime: Runtime, ios_app: ClientApp, local_root: Path
    ) -> None:
        folder = local_root / "exports" / str(ios_app.app_id) / "out"
        folder.mkdir(parents=True)
        async with transaction(runtime.sessions) as session:
            for body in (
                {"name": "daily", "kind": "push_events", "url": f"file://{folder}"},
                {
                    "name": "warehouse",
                    "kind": "optin_users",
                    "url": "sftp://files.example.com/in",
                    "credentials": {"username": "u", "password": "s3cret-pass"},
                },
            ):
                await exports.create_destination(
                    session,
                    app_id=ios_app.app_id,
                    body=DestinationIn.model_validate(body),
                    box=runtime.box,
                    outbound=runtime.outbound,
                    now=utcnow(),
                )
        settings = runtime.settings.model_copy(
            update={"export_local_roots": [local_root / "exports"]}
        )
        day = datetime.now(UTC).date() - timedelta(days=1)
        runner = ExportRunner(runtime.sessions, settings, runtime.box)
        (run,) = await runner.run_days(app_id=ios_app.app_id, name="daily", days=[day])
        assert run.status == "succeeded"
        await signed_in(api, runtime, ios_app, Role.VIEWER)

        listed = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences/exports")
        history = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences/exports/daily")
        other = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences/exports/warehouse")
        missing = await api.get(f"/dashboard/apps/{ios_app.app_id}/audiences/exports/nope")

        assert listed.status_code == history.status_code == other.status_code == 200
        assert missing.status_code == 404
        daily = row_of(listed, "daily")
        assert day.isoformat() in daily
        assert "succeeded" in daily
        assert "no day produced yet" in row_of(listed, "warehouse")
        produced = text(history)
        assert day.isoformat() in produced
        assert "succeeded" in produced
        assert f"clarion_{ios_app.app_id}_push_events_{day:%Y%m%d}.csv" in produced
        for page in (listed, history, other):
            assert "s3cret-pass" not in page.text


async def next_poll(runtime: Runtime, app: ClientApp) -> str:
    async with runtime.sessions() as session:
        source = await imports.describe_source(session, app_id=app.app_id, name="crm")
    return source.next_poll
