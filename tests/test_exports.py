"""Daily flat-file exports (docs/exports.md) to real local servers: a day of events exported,
read back and compared line by line with the event log; the 2 h rule; retries after an
outage; exactly once across a crash; the opt-in snapshot; gzip and id columns; bad input."""

from __future__ import annotations

import csv
import gzip
import io
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import select, update

from clarion.db import transaction
from clarion.events.models import InAppEvent, PushEvent, PushEventKind
from clarion.events.service import push_event_row, record_push_events
from clarion.exports.models import ExportRun
from clarion.exports.tasks import ExportRunner
from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.inapp.test_api import created as created_inapp
from tests.support.clock import Clock
from tests.test_campaign_runs import add_installs
from tests.test_campaigns import error

if TYPE_CHECKING:
    from tests.support.storage_servers import FtpServer, GcsServer, S3Server, SftpServer

DAY = date(2026, 11, 23)
MIDNIGHT = datetime(2026, 11, 24, tzinfo=UTC)  # DAY's end


@dataclass
class Place:
    """A folder on one of the servers: the destination's URL and how to read what landed."""

    url: str
    credentials: dict[str, str]
    read: Callable[[str], bytes]
    names: Callable[[], list[str]]
    root: Path | None = None  # on disk, for the servers that serve a folder


def place_on(protocol: str, request: pytest.FixtureRequest, local_root: Path) -> Place:
    folder = f"x{secrets.token_hex(4)}"
    if protocol == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")

        def s3_read(name: str) -> bytes:
            body: bytes = s3.client.get_object(Bucket=s3.bucket, Key=f"{folder}/{name}")[
                "Body"
            ].read()
            return body

        def s3_names() -> list[str]:
            listed = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{folder}/")
            return sorted(o["Key"].split("/", 1)[1] for o in listed.get("Contents", []))

        return Place(
            url=f"s3://{s3.bucket}/{folder}",
            credentials={
                "access_key": s3.access_key,
                "secret_key": s3.secret_key,
                "region": s3.region,
                "endpoint_url": s3.endpoint_url,
            },
            read=s3_read,
            names=s3_names,
        )
    if protocol == "gs":
        gcs: GcsServer = request.getfixturevalue("gcs_server")

        def gcs_names() -> list[str]:
            from gcsfs.core import GCSFileSystem

            fs = GCSFileSystem(**gcs.storage_options(), skip_instance_cache=True)
            return sorted(path.rsplit("/", 1)[1] for path in fs.ls(f"{gcs.bucket}/{folder}"))

        return Place(
            url=f"gs://{gcs.bucket}/{folder}",
            credentials={"endpoint_url": gcs.endpoint_url},
            read=lambda name: gcs.read_bytes(f"{folder}/{name}"),
            names=gcs_names,
        )
    if protocol == "file":
        root = local_root / folder
        url, credentials = f"file://{root}", {}
    else:
        server: SftpServer | FtpServer = request.getfixturevalue(f"{protocol}_server")
        root = server.root / folder
        url = f"{protocol}://{server.host}:{server.port}/{folder}"
        credentials = {"username": server.username, "password": server.password}
    root.mkdir(parents=True)
    return Place(
        url=url,
        credentials=credentials,
        read=lambda name: (root / name).read_bytes(),
        names=lambda: sorted(p.name for p in root.iterdir()),
        root=root,
    )


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture(scope="module")
def ca_bundle(ftps_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("ca") / "bundle.pem"
    bundle.write_bytes(ftps_server.ca_file.read_bytes())
    return bundle


def runner(runtime: Runtime, clock: Clock, local_root: Path, ca_bundle: Path) -> ExportRunner:
    settings = runtime.settings.model_copy(
        update={"export_local_roots": [local_root], "connector_ca_file": str(ca_bundle)}
    )
    return ExportRunner(runtime.sessions, settings, runtime.box, clock=clock)


async def create_destination(
    api: httpx.AsyncClient, app: ClientApp, place: Place, **fields: Any
) -> dict[str, Any]:
    body = {"name": "crm", "kind": "push_events", "url": place.url, **fields}
    if place.credentials:
        body["credentials"] = place.credentials
    response = await api.post(
        f"/1.0/{app.api_key}/exports/destinations", headers=app.headers(), json=body
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def seed_events(runtime: Runtime, app: ClientApp) -> None:
    """A day of push and in-app events (and some just outside it), with awkward values."""
    at = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    async with transaction(runtime.sessions) as session:
        for n, kind in enumerate(
            ["push_sent", "push_opened", "push_error", "token_deleted", "push_optin"] * 4
        ):
            session.add(
                PushEvent(
                    app_id=app.app_id,
                    kind=kind,
                    occurred_at=at + timedelta(hours=n, seconds=n),
                    platform="ios",
                    install_id=f"install-{n}",
                    custom_id=None if n % 3 == 0 else f'user;"{n}"',
                    advertising_id=None,
                    send_token=None if kind == "push_optin" else f"send-{n}",
                    campaign_token=f"c{n}" if n % 2 else None,
                    group_id="welcome" if n % 2 == 0 and kind != "push_optin" else None,
                    reason="BadDeviceToken" if kind in ("push_error", "token_deleted") else None,
                )
            )
        for when in (at - timedelta(seconds=1), at + timedelta(days=1)):  # not of DAY
            session.add(
                PushEvent(app_id=app.app_id, kind="push_sent", occurred_at=when, platform="ios")
            )
        for n, kind in enumerate(
            ["inapp_supplied", "inapp_shown", "inapp_clicked", "inapp_closed"]
        ):
            session.add(
                InAppEvent(
                    app_id=app.app_id,
                    kind=kind,
                    occurred_at=at + timedelta(minutes=n),
                    platform="ios",
                    install_id="install-1",
                    custom_id="ada",
                    campaign_id="promo",
                    cta_position=0 if kind == "inapp_clicked" else None,
                    cta_label="Buy, now\nplease" if kind == "inapp_clicked" else None,
                )
            )


def parse(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=";"))


def sniffed(data: bytes, request: pytest.FixtureRequest) -> list[dict[str, str]]:
    """The file as a spreadsheet-style reader takes it: DuckDB's CSV sniffer, told nothing of
    the delimiter, quoting or header."""
    import duckdb

    path = Path(request.getfixturevalue("tmp_path")) / "sniffed.csv"
    path.write_bytes(data)
    relation = duckdb.read_csv(str(path), all_varchar=True)
    return [
        {column: value or "" for column, value in zip(relation.columns, row, strict=True)}
        for row in relation.fetchall()
    ]


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def logged_push_events(runtime: Runtime, app: ClientApp) -> list[dict[str, str]]:
    """What the file must say, built from the event log directly."""
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    async with runtime.sessions() as session:
        events = await session.scalars(
            select(PushEvent)
            .where(
                PushEvent.app_id == app.app_id,
                PushEvent.occurred_at >= start,
                PushEvent.occurred_at < start + timedelta(days=1),
            )
            .order_by(PushEvent.occurred_at, PushEvent.id)
        )
        return [
            {
                "date": iso(e.occurred_at),
                "event_type": e.kind,
                "campaign_token": e.campaign_token or "",
                "transactional_token": (e.send_token or "") if e.campaign_token is None else "",
                "group_id": e.group_id or "",
                "install_id": e.install_id or "",
                "custom_id": e.custom_id or "",
                "advertising_id": e.advertising_id or "",
                "platform": e.platform,
                "error": e.reason or "",
                "resent": "1" if e.resent else "0",
            }
            for e in events
        ]


@pytest.mark.parametrize("protocol", ["s3", "gs", "sftp", "ftp", "ftps", "file"])
async def test_a_day_of_push_events_lands_as_the_event_log_says(
    protocol: str,
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    await seed_events(runtime, ios_app)
    place = place_on(protocol, request, local_root / str(ios_app.app_id))
    created = await create_destination(api, ios_app, place)
    await _first_day(runtime, ios_app)
    clock = Clock(MIDNIGHT + timedelta(hours=2))

    runs = await runner(runtime, clock, local_root, ca_bundle).run_due()

    mine = [run for run in runs if _in(run, place)]
    assert len(mine) == 1, [(r.day, r.status, r.error) for r in runs]
    name = f"clarion_{ios_app.app_id}_push_events_20261123.csv"
    assert place.names() == [name]  # no temporary file left
    data = place.read(name)
    assert data.startswith(
        b"date;event_type;campaign_token;transactional_token;group_id;install_id;"
        b"custom_id;advertising_id;platform;error;resent\n"
    )
    assert parse(data) == await logged_push_events(runtime, ios_app)
    assert sniffed(data, request) == parse(data)
    assert mine[0].rows == 20
    assert created["has_credentials"] is bool(place.credentials)


async def _first_day(runtime: Runtime, app: ClientApp) -> None:
    """Destinations export from the day they were created: make that DAY."""
    from sqlalchemy import update

    from clarion.exports.models import ExportDestination

    async with transaction(runtime.sessions) as session:
        await session.execute(
            update(ExportDestination)
            .where(ExportDestination.app_id == app.app_id)
            .values(first_day=DAY)
        )


async def test_a_push_sent_again_after_an_unknown_outcome_is_flagged_in_the_last_column(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    """`resent` comes after every other column, whichever id columns the destination keeps."""
    at = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    rows = [
        push_event_row(
            app_id=ios_app.app_id,
            kind=kind,
            occurred_at=at + timedelta(seconds=n),
            platform="ios",
            install_id=f"install-{n}",
            send_token="send-1",
            campaign_token="c1",
            reason="BadDeviceToken" if kind is PushEventKind.ERROR else None,
            resent=resent,
        )
        for n, (kind, resent) in enumerate(
            [
                (PushEventKind.SENT, False),
                (PushEventKind.SENT, True),
                (PushEventKind.ERROR, False),
            ]
        )
    ]
    async with transaction(runtime.sessions) as session:
        await record_push_events(session, rows)
    place = place_on("file", request, local_root / str(ios_app.app_id))
    await create_destination(api, ios_app, place, id_columns=["install_id"])
    await _first_day(runtime, ios_app)

    await runner(runtime, Clock(MIDNIGHT + timedelta(hours=3)), local_root, ca_bundle).run_due()

    data = place.read(f"clarion_{ios_app.app_id}_push_events_20261123.csv")
    assert data.startswith(
        b"date;event_type;campaign_token;transactional_token;group_id;install_id;platform;"
        b"error;resent\n"
    )
    assert [(r["event_type"], r["install_id"], r["error"], r["resent"]) for r in parse(data)] == [
        ("push_sent", "install-0", "", "0"),
        ("push_sent", "install-1", "", "1"),
        ("push_error", "install-2", "BadDeviceToken", "0"),
    ]


async def test_in_app_events_gzip_and_chosen_id_columns(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    await seed_events(runtime, ios_app)
    place = place_on("file", request, local_root / str(ios_app.app_id))
    await create_destination(
        api,
        ios_app,
        place,
        kind="inapp_events",
        gzip=True,
        id_columns=["custom_id"],
        file_name="{destination}-{kind}-{date}.csv",
    )
    await _first_day(runtime, ios_app)

    await runner(runtime, Clock(MIDNIGHT + timedelta(hours=3)), local_root, ca_bundle).run_due()

    rows = parse(gzip.decompress(place.read("crm-inapp_events-20261123.csv.gz")))
    assert [list(row) for row in rows[:1]] == [
        ["date", "event_type", "custom_id", "platform", "event_var_1", "event_var_2", "event_var_3"]
    ]
    assert [(r["event_type"], r["event_var_2"], r["event_var_3"]) for r in rows] == [
        ("inapp_supplied", "", ""),
        ("inapp_shown", "", ""),
        ("inapp_clicked", "0", "Buy, now\nplease"),
        ("inapp_closed", "", ""),
    ]


async def test_in_app_events_name_the_in_app_campaigns_tokens(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    """A campaign of the In-App Campaigns API, its events reported by the SDK: the export's
    campaign column (event_var_1) holds the campaign's token."""
    token = await created_inapp(api, ios_app)
    await api.put(f"/sdk/v1/{ios_app.api_key}/installations/i1", json={"custom_id": "ada"})
    at = f"{DAY.isoformat()}T08:00:00Z"
    reported = await api.post(
        f"/sdk/v1/{ios_app.api_key}/installations/i1/inapp-events",
        json={
            "events": [
                {"kind": "inapp_shown", "campaign_id": token, "occurred_at": at},
                {
                    "kind": "inapp_clicked",
                    "campaign_id": token,
                    "cta_position": 1,
                    "cta_label": "Later",
                    "occurred_at": at,
                },
            ]
        },
    )
    assert reported.status_code == 202, reported.text
    place = place_on("file", request, local_root / str(ios_app.app_id))
    await create_destination(api, ios_app, place, kind="inapp_events")
    await _first_day(runtime, ios_app)

    await runner(runtime, Clock(MIDNIGHT + timedelta(hours=3)), local_root, ca_bundle).run_due()

    (name,) = place.names()
    rows = parse(place.read(name))
    assert [
        (r["event_type"], r["event_var_1"], r["event_var_2"], r["event_var_3"]) for r in rows
    ] == [
        ("inapp_shown", token, "", ""),
        ("inapp_clicked", token, "1", "Later"),
    ]


async def test_the_optin_snapshot_lists_every_installation(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    changed = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
    await add_installs(runtime, ios_app, 1, custom_id="ada", optin_changed_at=changed)
    await add_installs(runtime, ios_app, 1, custom_id="ada", advertising_id="idfa-2")
    await add_installs(runtime, ios_app, 1, push_optin=False)
    await add_installs(runtime, ios_app, 1, is_dev=True)  # dev installs are not users
    place = place_on("sftp", request, local_root / str(ios_app.app_id))
    await create_destination(api, ios_app, place, kind="optin_users")
    await _first_day(runtime, ios_app)

    await runner(runtime, Clock(MIDNIGHT + timedelta(hours=2)), local_root, ca_bundle).run_due()

    rows = parse(place.read(f"clarion_{ios_app.app_id}_optin_users_20261123.csv"))
    assert [
        (r["custom_id"], r["advertising_id"], r["platform"], r["push_optin"], r["optin_date"])
        for r in rows
    ] == [
        ("ada", "", "ios", "1", "2026-11-20T08:30:00Z"),
        ("ada", "idfa-2", "ios", "1", ""),
        ("", "", "ios", "0", ""),
    ]


async def test_a_day_is_due_two_hours_after_it_ends_and_only_once(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    place = place_on("file", request, local_root / str(ios_app.app_id))
    await create_destination(api, ios_app, place)
    await _first_day(runtime, ios_app)
    clock = Clock(MIDNIGHT + timedelta(hours=1, minutes=59))
    export = runner(runtime, clock, local_root, ca_bundle)

    assert [r for r in await export.run_due() if r.day == DAY and _in(r, place)] == []
    clock.now = MIDNIGHT + timedelta(hours=2)
    assert [r.status for r in await export.run_due() if _in(r, place)] == ["succeeded"]
    clock.now += timedelta(hours=5)
    assert [r for r in await export.run_due() if _in(r, place)] == []  # produced once


def _in(run: ExportRun, place: Place) -> bool:
    return run.path is not None and place.url.rsplit("/", 1)[1] in run.path


async def test_a_failed_upload_is_retried_with_backoff_until_it_succeeds(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    place = place_on("ftp", request, local_root / str(ios_app.app_id))
    good_password = place.credentials["password"]
    place.credentials["password"] = "wrong"
    await create_destination(api, ios_app, place)
    await _first_day(runtime, ios_app)
    clock = Clock(MIDNIGHT + timedelta(hours=2))
    export = runner(runtime, clock, local_root, ca_bundle)

    (failed,) = [
        r for r in await export.run_due() if r.day == DAY and r.error and "refused" in r.error
    ]
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert "wrong" not in (failed.error or "")
    assert [r for r in await export.run_due() if r.id == failed.id] == []  # waiting a minute
    response = await api.patch(
        f"/1.0/{ios_app.api_key}/exports/destinations/crm",
        headers=ios_app.headers(),
        json={"credentials": {**place.credentials, "password": good_password}},
    )
    assert response.status_code == 200, response.text
    clock.now += timedelta(seconds=61)
    (retried,) = [r for r in await export.run_due() if r.id == failed.id]

    assert (retried.status, retried.attempts) == ("succeeded", 2)
    assert [h["status"] for h in retried.history or []] == ["failed", "succeeded"]
    assert place.names() == [f"clarion_{ios_app.app_id}_push_events_20261123.csv"]
    runs = await api.get(
        f"/1.0/{ios_app.api_key}/exports/destinations/crm/runs", headers=ios_app.headers()
    )
    assert [(r["day"], r["status"], r["attempts"]) for r in runs.json()] == [
        ("2026-11-23", "succeeded", 2)
    ]


async def test_a_crash_mid_upload_produces_the_day_once_after_the_lease(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    await seed_events(runtime, ios_app)
    place = place_on("sftp", request, local_root / str(ios_app.app_id))
    await create_destination(api, ios_app, place)
    await _first_day(runtime, ios_app)
    clock = Clock(MIDNIGHT + timedelta(hours=2))
    crashed = runner(runtime, clock, local_root, ca_bundle)
    async with runtime.sessions() as session:
        from clarion.exports.models import ExportDestination

        destination = await session.scalar(
            select(ExportDestination).where(ExportDestination.app_id == ios_app.app_id)
        )
    assert destination is not None
    assert await crashed._claim(destination, DAY, force=False) is not None  # then dies
    name = f"clarion_{ios_app.app_id}_push_events_20261123.csv"
    assert place.root is not None  # what the dead process had uploaded so far:
    (place.root / f".{name}.part").write_bytes(b"date;event_type\n2026-11-23T00:")

    later = runner(runtime, clock, local_root, ca_bundle)
    assert [r for r in await later.run_due() if r.destination_id == destination.id] == []
    clock.now += timedelta(minutes=31)  # the dead process's lease has run out
    (run,) = [r for r in await later.run_due() if r.destination_id == destination.id]

    assert (run.status, run.attempts, run.rows) == ("succeeded", 2, 20)
    assert place.names() == [name]
    assert parse(place.read(name)) == await logged_push_events(runtime, ios_app)
    clock.now += timedelta(hours=1)
    assert [r for r in await later.run_due() if r.destination_id == destination.id] == []


class TestDestinationsApi:
    def url(self, app: ClientApp) -> str:
        return f"/1.0/{app.api_key}/exports/destinations"

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"url": "https://example.com/x"}, "url"),
            ({"kind": "clicks"}, "kind"),
            ({"file_name": "export.csv"}, "file_name"),
            ({"file_name": "{app}_{date}.csv"}, "file_name"),
            ({"file_name": "../{date}.csv"}, "file_name"),
            ({"file_name": "x}_{date}.csv"}, "file_name"),
            ({"file_name": "{{date}}.csv"}, "file_name"),
            ({"id_columns": ["email"]}, "id_columns"),
            ({"delay_minutes": -1}, "delay_minutes"),
        ],
    )
    async def test_bad_settings_are_refused_naming_the_field(
        self, change: dict[str, Any], field: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {"name": "crm", "kind": "push_events", "url": "s3://bucket/out", **change}
        response = await api.post(self.url(ios_app), headers=ios_app.headers(), json=body)
        assert field in error(response, 400, 31)

    async def test_secrets_are_never_shown_and_the_destination_can_be_deleted(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {
            "name": "crm",
            "kind": "optin_users",
            "url": "sftp://files.example.com/in",
            "credentials": {"username": "u", "password": "Sup3r-secret"},
        }
        created = await api.post(self.url(ios_app), headers=ios_app.headers(), json=body)
        listed = await api.get(self.url(ios_app), headers=ios_app.headers())
        for response in (created, listed):
            assert response.is_success, response.text
            assert "Sup3r-secret" not in response.text
        assert listed.json()[0]["first_day"] == datetime.now(UTC).date().isoformat()
        deleted = await api.delete(self.url(ios_app) + "/crm", headers=ios_app.headers())
        assert deleted.status_code == 204
        error(await api.get(self.url(ios_app) + "/crm", headers=ios_app.headers()), 404, 20)


@pytest.mark.parametrize(
    ("day", "message"),
    [("2999-01-01", "has not ended yet"), ("yesterday", "is not a date")],
)
def test_the_cli_refuses_a_day_in_the_future_or_not_a_date(
    day: str, message: str, settings: Any
) -> None:
    env = {
        **os.environ,
        "CLARION_DATABASE_URL": settings.database_url,
        "CLARION_VAR_DIR": str(settings.var_dir),
        "CLARION_SECRET_KEY": settings.secret_key,
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clarion.cli",
            "exports",
            "run",
            "--app-id",
            "1",
            "--name",
            "x",
            "--day",
            day,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


async def _campaign_ids_requested(
    api: httpx.AsyncClient, app: ClientApp, runtime: Runtime
) -> tuple[str, str]:
    """Seeded events, and an export request of campaign c1's ids: the Export API's base path
    and the request's id."""
    await seed_events(runtime, app)
    base = f"/1.0/{app.api_key}/export"
    created = await api.post(
        f"{base}/campaign/c1/ids",
        headers=app.headers(),
        json={"from": "2026-11-01", "to": "now", "events": ["push_open", "push_sent"]},
    )
    assert created.status_code == 201, created.text
    return base, str(created.json()["id"])


class TestExportApi:
    """Export API 1.0 (spec §11.1): request, poll, download behind X-Authorization."""

    async def test_a_request_whose_worker_died_is_taken_again_by_the_runners_clock(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        from clarion.exports.models import ExportRequest
        from clarion.exports.tasks import STALE_PENDING, process_requests

        base = f"/1.0/{ios_app.api_key}/export"
        created = await api.post(
            f"{base}/campaign/c1/ids",
            headers=ios_app.headers(),
            json={"from": "2026-11-01", "to": "now"},
        )
        assert created.status_code == 201, created.text
        request_id = created.json()["id"]
        claimed_at = datetime.now(UTC) + timedelta(days=1)  # by a worker that then died
        async with transaction(runtime.sessions) as session:
            await session.execute(
                update(ExportRequest)
                .where(ExportRequest.id == request_id)
                .values(status="PENDING", started_at=claimed_at)
            )

        async def status() -> str:
            answer = await api.get(f"{base}/request/{request_id}", headers=ios_app.headers())
            found: str = answer.json()["status"]
            return found

        clock = Clock(claimed_at + STALE_PENDING)
        await process_requests(runtime.sessions, var_dir=runtime.settings.var_dir, clock=clock)
        assert await status() == "PENDING"  # maybe still being produced
        clock.advance(timedelta(seconds=1))
        await process_requests(runtime.sessions, var_dir=runtime.settings.var_dir, clock=clock)
        assert await status() == "SUCCESS"

    async def test_a_worker_taken_over_leaves_the_file_of_the_claim_that_took_it_over(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        """A worker slower than STALE_PENDING finishes after the worker that took its request
        over: what it wrote is not the request's file, and the file the request names is the
        newer claim's, as it was produced."""
        from clarion.exports.models import ExportRequest
        from clarion.exports.tasks import STALE_PENDING, _produce_request

        base, request_id = await _campaign_ids_requested(api, ios_app, runtime)
        stalled = datetime.now(UTC)  # the first claim, whose worker then stalled
        newer = stalled + STALE_PENDING + timedelta(seconds=1)
        async with transaction(runtime.sessions) as session:
            await session.execute(
                update(ExportRequest)
                .where(ExportRequest.id == request_id)
                .values(status="PENDING", started_at=newer)
            )
        var_dir = runtime.settings.var_dir
        await _produce_request(runtime.sessions, request_id, newer, var_dir, Clock(newer))

        async def download() -> list[dict[str, str]]:
            status = await api.get(f"{base}/request/{request_id}", headers=ios_app.headers())
            assert status.json()["status"] == "SUCCESS"
            answer = await api.get(
                status.json()["file_url"].replace("http://clarion.test", ""),
                headers=ios_app.headers(),
            )
            assert answer.status_code == 200, answer.text
            return parse(answer.content)

        produced = await download()
        async with transaction(runtime.sessions) as session:  # so that a later file differs
            session.add(
                PushEvent(
                    app_id=ios_app.app_id,
                    kind="push_sent",
                    occurred_at=datetime.combine(DAY, datetime.min.time(), tzinfo=UTC),
                    platform="ios",
                    install_id="install-late",
                    campaign_token="c1",
                )
            )
        later = newer + timedelta(seconds=1)
        await _produce_request(runtime.sessions, request_id, stalled, var_dir, Clock(later))

        assert await download() == produced
        files = sorted(path.name for path in (var_dir / "export-requests").glob(f"*{request_id}*"))
        assert len(files) == 1, files

    async def test_a_campaigns_ids_are_exported_on_request(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        from clarion.exports.tasks import process_requests

        base, request_id = await _campaign_ids_requested(api, ios_app, runtime)
        waiting = await api.get(f"{base}/request/{request_id}", headers=ios_app.headers())
        assert (waiting.json()["status"], waiting.json().get("file_url")) == ("CREATED", None)

        assert await process_requests(runtime.sessions, var_dir=runtime.settings.var_dir) >= 1

        status = (await api.get(f"{base}/request/{request_id}", headers=ios_app.headers())).json()
        assert status["status"] == "SUCCESS"
        assert status["uri"] == f"{base}/campaign/c1/ids"
        assert status["request"] == {
            "from": "2026-11-01",
            "to": "now",
            "events": ["push_open", "push_sent"],
        }
        file_url = status["file_url"].replace("http://clarion.test", "")
        refused = await api.get(file_url)
        assert refused.status_code == 401
        csv_file = await api.get(file_url, headers=ios_app.headers())
        assert csv_file.status_code == 200
        assert parse(csv_file.content) == [
            {
                "install_id": "install-1",
                "custom_id": 'user;"1"',
                "advertising_id": "",
                "event_type": "push_opened",
            }
        ]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"from": "2026-11-20", "to": "2026-11-10"}, "from: after to"),
            ({"from": "last week", "to": "now"}, "from:"),
            ({"from": "now", "to": "now", "events": ["push_clicked"]}, "events:"),
            ({"from": "now", "to": "now", "ids": ["email"]}, "ids"),
        ],
    )
    async def test_bad_requests_are_400_31(
        self, body: dict[str, Any], message: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await api.post(
            f"/1.0/{ios_app.api_key}/export/campaign/c1/events",
            headers=ios_app.headers(),
            json=body,
        )
        assert message in error(response, 400, 31)

    async def test_the_status_takes_the_live_key(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await api.get(
            f"/1.0/{ios_app.dev_api_key}/export/request/nope", headers=ios_app.headers()
        )
        error(response, 403, 12)


async def test_a_missing_bucket_fails_the_day_with_its_reason_and_nothing_is_marked_done(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    place = place_on("s3", request, local_root / str(ios_app.app_id))
    place.url = place.url.replace("s3://clarion-test/", "s3://no-such-bucket/")
    await create_destination(api, ios_app, place)
    await _first_day(runtime, ios_app)
    clock = Clock(MIDNIGHT + timedelta(hours=2))

    runs = [
        r for r in await runner(runtime, clock, local_root, ca_bundle).run_due() if r.day == DAY
    ]
    mine = [r for r in runs if r.error and "no-such-bucket" in r.error]

    assert [(r.status, r.rows, r.path) for r in mine] == [("failed", None, None)]
    assert mine[0].next_attempt_at is not None


async def test_a_forced_run_produces_a_failed_day_at_once(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    local_root: Path,
    ca_bundle: Path,
) -> None:
    place = place_on("ftp", request, local_root / str(ios_app.app_id))
    good_password = place.credentials["password"]
    place.credentials["password"] = "wrong"
    await create_destination(api, ios_app, place)
    await _first_day(runtime, ios_app)
    export = runner(runtime, Clock(MIDNIGHT + timedelta(hours=2)), local_root, ca_bundle)
    assert [r.status for r in await export.run_due() if r.error and "refused" in r.error] == [
        "failed"
    ]
    await api.patch(
        f"/1.0/{ios_app.api_key}/exports/destinations/crm",
        headers=ios_app.headers(),
        json={"credentials": {**place.credentials, "password": good_password}},
    )

    (run,) = await export.run_days(app_id=ios_app.app_id, name="crm", days=[DAY])

    assert (run.status, run.attempts) == ("succeeded", 2)  # without waiting for the backoff
    assert place.names() == [f"clarion_{ios_app.app_id}_push_events_20261123.csv"]
