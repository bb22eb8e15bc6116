"""Flat-file audience imports against real local servers (S3, SFTP, FTP, FTPS, HTTPS) and
local folders: sources by API, polling, replace vs. apply_changes, never twice, delete after,
bad files and bad servers, and the CSV upload of the Custom Audience API."""

from __future__ import annotations

import asyncio
import gzip
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import select, update

from clarion.db import transaction
from clarion.imports.idfile import MAX_LINE_BYTES, IdFileParser
from clarion.imports.models import ImportRun, ImportSource
from clarion.imports.tasks import LEASE, LEASE_RENEWAL_SECONDS, ImportRunner
from clarion.runtime import Runtime
from tests.conftest import ClientApp
from tests.support.clock import Clock
from tests.support.waiting import eventually
from tests.test_campaign_runs import add_installs
from tests.test_campaigns import error
from tests.test_custom_audiences import estimate, patch, view

if TYPE_CHECKING:
    from tests.support.storage_servers import (
        FtpServer,
        FtpsServer,
        HttpsServer,
        S3Server,
        SftpServer,
    )


@pytest.fixture(scope="module")
def ca_bundle(ftps_server: FtpsServer, https_server: HttpsServer, tmp_path_factory: Any) -> Path:
    """The servers' CAs in one file, as an operator would give CLARION_CONNECTOR_CA_FILE."""
    bundle: Path = tmp_path_factory.mktemp("ca") / "bundle.pem"
    bundle.write_bytes(ftps_server.ca_file.read_bytes() + https_server.ca_file.read_bytes())
    return bundle


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "imports"
    root.mkdir()
    return root


@pytest.fixture
def runner(runtime: Runtime, ca_bundle: Path, local_root: Path) -> ImportRunner:
    return make_runner(runtime, ca_bundle, local_root)


def make_runner(
    runtime: Runtime, ca_bundle: Path, local_root: Path, clock: Callable[[], datetime] | None = None
) -> ImportRunner:
    settings = runtime.settings.model_copy(
        update={"connector_ca_file": str(ca_bundle), "import_local_roots": [local_root]}
    )
    if clock is None:
        return ImportRunner(runtime.sessions, settings, runtime.box)
    return ImportRunner(runtime.sessions, settings, runtime.box, clock=clock)


@dataclass
class Drop:
    """A folder on one of the servers: where a test drops files, and the source's URL for it."""

    url: str
    credentials: dict[str, str]
    put: Callable[[str, bytes], None]
    exists: Callable[[str], bool]


def folder_on(protocol: str, request: pytest.FixtureRequest, local_root: Path) -> Drop:
    folder = f"t{secrets.token_hex(4)}"
    if protocol == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")

        def s3_exists(name: str) -> bool:
            listed = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{folder}/{name}")
            return bool(listed.get("KeyCount"))

        return Drop(
            url=f"s3://{s3.bucket}/{folder}",
            credentials={
                "access_key": s3.access_key,
                "secret_key": s3.secret_key,
                "region": s3.region,
                "endpoint_url": s3.endpoint_url,
            },
            put=lambda name, data: s3.put_bytes(f"{folder}/{name}", data),
            exists=s3_exists,
        )
    if protocol == "file":
        root = local_root / folder
        url = f"file://{root}"
        credentials: dict[str, str] = {}
    else:
        server: SftpServer | FtpServer | HttpsServer = request.getfixturevalue(f"{protocol}_server")
        root = server.root / folder
        if protocol == "https":
            url = server.url(f"{folder}/audience.csv")  # over HTTP(S) the URL is the file
        else:
            url = f"{protocol}://{server.host}:{server.port}/{folder}"
        assert server.username is not None
        assert server.password is not None
        credentials = {"username": server.username, "password": server.password}
    root.mkdir(parents=True)

    def put(name: str, data: bytes) -> None:
        # Written aside and renamed, as an uploader should: a poll never sees half a file.
        (root / f".{name}.part").write_bytes(data)
        (root / f".{name}.part").rename(root / name)

    return Drop(url=url, credentials=credentials, put=put, exists=lambda n: (root / n).exists())


async def create_source(
    api: httpx.AsyncClient, app: ClientApp, drop: Drop, **fields: Any
) -> dict[str, Any]:
    body = {
        "name": "crm",
        "url": drop.url,
        "credentials": drop.credentials,
        "id_type": "custom_ids",
        "audience_name": "from-file",
        **fields,
    }
    response = await api.post(f"/1.0/{app.api_key}/imports", headers=app.headers(), json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def members(api: httpx.AsyncClient, app: ClientApp, audience: str = "from-file") -> int:
    count: int = (await view(api, app, audience))["nb_ids"]
    return count


def one(runs: list[ImportRun]) -> ImportRun:
    assert len(runs) == 1, [(r.path, r.status, r.error) for r in runs]
    return runs[0]


PROTOCOLS = ["s3", "sftp", "ftp", "ftps", "https", "file"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_dropped_file_becomes_an_audience_a_campaign_targets(
    protocol: str,
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    for custom_id in ("ada", "bob", "cy"):
        await add_installs(runtime, ios_app, 1, custom_id=custom_id)
    drop = folder_on(protocol, request, local_root / str(ios_app.app_id))
    drop.put("audience.csv", b"custom_id,score\r\nada,3\r\nbob,5\r\nnobody,1\r\n")
    await create_source(api, ios_app, drop, id_column="custom_id", pattern="*.csv")

    run = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

    assert (run.status, run.error) == ("succeeded", None)
    assert (run.lines_read, run.ids_accepted, run.ids_rejected) == (4, 3, 0)
    assert run.path is not None
    assert run.path.endswith("audience.csv")
    assert await members(api, ios_app) == 3
    assert await estimate(api, ios_app, ["from-file"]) == 2  # ada and bob have installs


async def test_replace_mode_makes_a_changed_file_the_whole_audience(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    drop = folder_on("sftp", request, local_root / str(ios_app.app_id))
    drop.put("ids.csv", b"a\nb\nc\n")
    await create_source(api, ios_app, drop, header=False)
    one(await runner.run_source(app_id=ios_app.app_id, name="crm"))
    await patch(
        api, ios_app, "from-file", {"type": "custom_ids", "ids": [{"action": "add", "id": "z"}]}
    )

    # (Another size: over SFTP and FTP a change shows as size and mtime, to the second.)
    drop.put("ids.csv", b"c\nd\nd\nd\n")
    run = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

    assert (run.status, run.nb_ids) == ("succeeded", 2)  # two distinct ids
    assert await members(api, ios_app) == 2  # c, d: the API's "z" went with the old content


async def test_apply_changes_mode_adds_new_lines_and_removes_deleted_ones(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    for custom_id in ("a", "b", "c", "dd", "z"):
        await add_installs(runtime, ios_app, 1, custom_id=custom_id)
    drop = folder_on("ftp", request, local_root / str(ios_app.app_id))
    drop.put("ids.csv", b"id\na\nb\nc\n")
    await create_source(api, ios_app, drop, on_change="apply_changes")
    first = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))
    assert (first.added, first.removed) == (3, 0)
    await patch(
        api, ios_app, "from-file", {"type": "custom_ids", "ids": [{"action": "add", "id": "z"}]}
    )

    drop.put("ids.csv", b"id\nb\nc\ndd\n")
    second = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

    assert (second.status, second.added, second.removed) == ("succeeded", 1, 1)
    assert await members(api, ios_app) == 4  # b, c, dd from the file, z from the API
    assert await estimate(api, ios_app, ["from-file"]) == 4


async def test_a_file_is_never_ingested_twice(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    drop = folder_on("file", request, local_root / str(ios_app.app_id))
    drop.put("ids.csv", b"a\nb\n")
    await create_source(api, ios_app, drop, header=False)
    one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

    assert await runner.run_source(app_id=ios_app.app_id, name="crm") == []  # not read again

    drop.put("ids.csv", b"a\nb\n")  # uploaded again, same content: read, but not applied
    path = local_root / str(ios_app.app_id) / drop.url.rsplit("/", 1)[1] / "ids.csv"
    os.utime(path, (1_000_000_000, 1_000_000_000))
    again = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))
    assert (again.status, again.indexing_token) == ("unchanged", None)
    assert await runner.run_source(app_id=ios_app.app_id, name="crm") == []


async def test_delete_after_removes_the_file_once_ingested(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    drop = folder_on("s3", request, local_root / str(ios_app.app_id))
    drop.put("ids.csv.gz", gzip.compress(b"id\na\nb\n"))  # inflated on the way
    drop.put("keep.txt", b"not matched by the pattern")
    await create_source(api, ios_app, drop, delete_after=True, pattern="*.csv.gz")

    run = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

    assert (run.status, run.error, run.ids_accepted) == ("succeeded", None, 2)
    assert not drop.exists("ids.csv.gz")
    assert drop.exists("keep.txt")
    assert await members(api, ios_app) == 2


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"id\na\nb;c\n", "line 3: mixed delimiters"),
        (b"id\na\n\x00\x01\x02\n", "line 3: binary content"),
        (b"id\na\n\xff\xfe\n", "line 3: not utf-8 text"),
        (b"id,score\na,1\nb\n", "line 3: 1 fields where the file has 2"),
        (b"name\na\n", "line 1: no column 'id' in the header (name)"),
        (gzip.compress(b"id\na\nb\n" * 1000)[:-40], "truncated or corrupt"),
        (b"id\na\n" + b" " * (MAX_LINE_BYTES + 1) + b"\nb\n", "line 3: line longer than 65536"),
    ],
    ids=["mixed-delimiters", "binary", "encoding", "fields", "no-column", "truncated", "long-line"],
)
async def test_a_bad_file_fails_with_its_line_and_leaves_the_audience_as_it_was(
    content: bytes,
    reason: str,
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    drop = folder_on("file", request, local_root / str(ios_app.app_id))
    drop.put("ids.csv.gz", gzip.compress(b"id\nkept-1\nkept-2\n"))
    await create_source(api, ios_app, drop, id_column="id", pattern="ids.csv*")
    one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

    name = "ids.csv.gz" if reason == "truncated or corrupt" else "ids.csv"
    drop.put(name, content)
    runs = await runner.run_source(app_id=ios_app.app_id, name="crm")

    failed = one(runs)
    assert failed.status == "failed"
    assert failed.error is not None
    assert reason in failed.error
    assert await members(api, ios_app) == 2
    assert await runner.run_source(app_id=ios_app.app_id, name="crm") == []  # not re-read
    response = await api.get(f"/1.0/{ios_app.api_key}/imports/crm/runs", headers=ios_app.headers())
    assert [r["status"] for r in response.json()] == ["failed", "succeeded"]


async def test_rejected_ids_are_counted_with_their_lines_and_the_rest_applied(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    drop = folder_on("file", request, local_root / str(ios_app.app_id))
    good = "6f1c1c4e-2b44-4c09-9a53-0d8e5e7b1f10"
    drop.put("ids.csv", f"idfa\n{good}\nnot-a-uuid\n{'0' * 8}\n".encode())
    await create_source(api, ios_app, drop, id_type="advertising_ids")

    run = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

    assert (run.status, run.ids_accepted, run.ids_rejected) == ("succeeded", 1, 2)
    assert run.first_rejections == [
        {"line": 3, "reason": "not a valid advertising id"},
        {"line": 4, "reason": "not a valid advertising id"},
    ]
    assert (await view(api, ios_app, "from-file"))["type"] == "advertising_ids"


async def test_the_audience_can_be_named_after_the_file(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    drop = folder_on("ftps", request, local_root / str(ios_app.app_id))
    drop.put("segment_gold.csv", b"id\na\nb\n")
    drop.put("segment_silver.csv", b"id\nc\n")
    drop.put("segment-bad name.csv", b"id\nd\n")
    await create_source(
        api,
        ios_app,
        drop,
        audience_name=None,
        audience_pattern=r"segment_(?P<name>\w+)\.csv",
        pattern="segment*.csv",
    )

    runs = await runner.run_source(app_id=ios_app.app_id, name="crm")

    assert sorted((r.audience_name or "", r.status) for r in runs) == [
        ("", "failed"),
        ("gold", "succeeded"),
        ("silver", "succeeded"),
    ]
    assert (await members(api, ios_app, "gold"), await members(api, ios_app, "silver")) == (2, 1)


async def test_an_audience_pattern_cannot_stall_the_poll(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    """Python's re took days on this pattern and name (x1.6 per a: 3.7 s at 36); RE2, linear
    in the name, answers at once."""
    drop = folder_on("file", request, local_root / str(ios_app.app_id))
    drop.put("a" * 60, b"id\na\n")
    drop.put("aaaa.csv", b"id\nb\n")
    await create_source(
        api, ios_app, drop, audience_name=None, audience_pattern=r"(?P<name>(a|aa)+)\.csv"
    )

    runs = await runner.run_source(app_id=ios_app.app_id, name="crm")

    assert sorted((r.audience_name or "", r.status) for r in runs) == [
        ("", "failed"),
        ("aaaa", "succeeded"),
    ]


async def test_wrong_credentials_are_reported_and_tried_again_next_poll(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
) -> None:
    drop = folder_on("sftp", request, local_root / str(ios_app.app_id))
    drop.put("ids.csv", b"id\na\n")
    drop.credentials["password"] = "wrong"
    await create_source(api, ios_app, drop)

    first = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))
    second = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

    for run in (first, second):
        assert (run.status, run.path) == ("failed", None)
        assert run.error is not None
        assert "refused" in run.error
        assert "wrong" not in run.error


async def test_an_unreachable_server_and_an_unpinned_host_key_are_clear_errors(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runner: ImportRunner,
    local_root: Path,
    sftp_server: SftpServer,
) -> None:
    drop = folder_on("sftp", request, local_root / str(ios_app.app_id))
    drop.put("ids.csv", b"id\na\n")
    other_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    drop.credentials["host_key"] = other_key
    await create_source(api, ios_app, drop)
    await create_source(api, ios_app, drop, name="closed", url="ftp://127.0.0.1:1/x")

    pinned = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))
    closed = one(await runner.run_source(app_id=ios_app.app_id, name="closed"))

    assert pinned.status == "failed"
    assert pinned.error is not None
    assert closed.error is not None
    assert "connection refused: nothing listens on that host and port" in closed.error
    assert "host key is not the one pinned in credentials.host_key" in str(pinned.error)
    true_key = " ".join(sftp_server.known_hosts.read_text().split()[1:3])
    drop.credentials["host_key"] = true_key
    response = await api.patch(
        f"/1.0/{ios_app.api_key}/imports/crm",
        headers=ios_app.headers(),
        json={"credentials": drop.credentials},
    )
    assert response.status_code == 200, response.text
    assert one(await runner.run_source(app_id=ios_app.app_id, name="crm")).status == "succeeded"


async def test_sources_are_polled_on_their_interval_by_one_process_at_a_time(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    ca_bundle: Path,
    local_root: Path,
) -> None:
    clock = Clock(datetime.now(UTC) + timedelta(days=365))  # every other test's source is due
    drop = folder_on("file", request, local_root / str(ios_app.app_id))
    drop.put("a.csv", b"id\na\n")
    await create_source(api, ios_app, drop, poll_interval_seconds=600)
    first, second = (make_runner(runtime, ca_bundle, local_root, clock) for _ in range(2))

    mine = await _my_runs(first, drop)
    assert [run.status for run in mine] == ["succeeded"]
    drop.put("b.csv", b"id\nb\n")
    assert await _my_runs(second, drop) == []  # not due for another 600 s
    clock.now += timedelta(seconds=601)
    async with transaction(runtime.sessions) as session:  # another process is polling it
        await session.execute(
            update(ImportSource)
            .where(ImportSource.app_id == ios_app.app_id)
            .values(lease_owner="elsewhere", lease_until=clock.now + timedelta(seconds=60))
        )
    assert await _my_runs(second, drop) == []
    clock.now += timedelta(seconds=61)  # its lease ran out: taken over
    assert [(run.path or "").rsplit("/", 1)[1] for run in await _my_runs(second, drop)] == ["b.csv"]


async def test_a_long_read_keeps_the_source_by_renewing_its_lease_on_the_runners_clock(
    request: pytest.FixtureRequest,
    api: httpx.AsyncClient,
    ios_app: ClientApp,
    runtime: Runtime,
    ca_bundle: Path,
    local_root: Path,
) -> None:
    clock = Clock(datetime.now(UTC))
    drop = folder_on("file", request, local_root / str(ios_app.app_id))
    drop.put("big.csv", b"id\n" + b"".join(b"user-%07d\n" % n for n in range(60_000)))  # 3 reads
    await create_source(api, ios_app, drop)
    runner = make_runner(runtime, ca_bundle, local_root, clock)
    loop = asyncio.get_running_loop()
    reads = 0

    async def lease_until() -> datetime | None:
        async with runtime.sessions() as session:
            source = await session.scalar(
                select(ImportSource).where(ImportSource.app_id == ios_app.app_id)
            )
            assert source is not None
            return source.lease_until

    async def renewed() -> None:
        expected = clock() + LEASE

        async def check() -> bool:
            return await lease_until() == expected

        await eventually(check, what="the lease renewed during the read", timeout=10)

    def progress(name: str, count: int, size: int | None) -> None:
        nonlocal reads
        reads += 1
        if reads == 1:  # a minute into the read, by the runner's monotonic clock
            clock.advance(timedelta(seconds=LEASE_RENEWAL_SECONDS + 1))
        elif reads == 2:  # the renewal runs on the loop: waited for from the reading thread
            asyncio.run_coroutine_threadsafe(renewed(), loop).result(timeout=15)

    run = one(await runner.run_source(app_id=ios_app.app_id, name="crm", on_progress=progress))
    assert (run.status, run.error) == ("succeeded", None)
    assert reads == 3
    assert await lease_until() is None  # released once polled


async def _my_runs(runner: ImportRunner, drop: Drop) -> list[ImportRun]:
    folder = drop.url.rsplit("/", 1)[1]
    return [
        run
        for run in await runner.poll_due(limit=10_000)
        if run.path is not None and f"/{folder}/" in run.path
    ]


class TestSourcesApi:
    def url(self, app: ClientApp, name: str = "") -> str:
        return f"/1.0/{app.api_key}/imports" + (f"/{name}" if name else "")

    async def test_credentials_are_kept_but_never_shown(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        body = {
            "name": "vault",
            "url": "sftp://files.example.com/exports",
            "credentials": {"username": "clarion", "password": "s3cret-Pa55"},
            "id_type": "install_ids",
            "audience_name": "a",
        }
        created = await api.post(self.url(ios_app), headers=ios_app.headers(), json=body)
        listed = await api.get(self.url(ios_app), headers=ios_app.headers())
        viewed = await api.get(self.url(ios_app, "vault"), headers=ios_app.headers())

        assert created.status_code == 201, created.text
        for response in (created, listed, viewed):
            assert "s3cret-Pa55" not in response.text
        assert viewed.json()["has_credentials"] is True
        assert [source["name"] for source in listed.json()] == ["vault"]
        async with runtime.sessions() as session:
            stored = await session.scalar(
                select(ImportSource.credentials).where(ImportSource.app_id == ios_app.app_id)
            )
        assert stored is not None
        assert "s3cret" not in stored

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"url": "gopher://x/y"}, "url"),
            ({"url": "sftp://u:pw@host/dir"}, "url"),
            ({"audience_pattern": "segment_.*"}, "audience_pattern"),
            ({"audience_pattern": r"(?P<name>\w+)"}, "audience"),  # and audience_name
            ({"audience_pattern": r"(?P<name>a)\1", "audience_name": None}, "RE2"),
            ({"audience_pattern": r"(?P<name>\w+)(?=\.csv)", "audience_name": None}, "RE2"),
            ({"delimiter": ":"}, "delimiter"),
            ({"encoding": "utf-16"}, "encoding"),
            ({"id_type": "emails"}, "id_type"),
            ({"poll_interval_seconds": 5}, "poll_interval_seconds"),
            ({"credentials": {"token": "x"}}, "credentials.token"),
        ],
    )
    async def test_bad_settings_are_refused_naming_the_field(
        self, change: dict[str, Any], field: str, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {
            "name": "crm",
            "url": "s3://bucket/prefix",
            "id_type": "custom_ids",
            "audience_name": "a",
            **change,
        }
        response = await api.post(self.url(ios_app), headers=ios_app.headers(), json=body)
        assert field in error(response, 400, 31)

    async def test_update_run_history_and_delete(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {"name": "crm", "url": "s3://b/p", "id_type": "custom_ids", "audience_name": "a"}
        assert (await api.post(self.url(ios_app), headers=ios_app.headers(), json=body)).is_success
        again = await api.post(self.url(ios_app), headers=ios_app.headers(), json=body)
        assert "exists" in error(again, 400, 31)

        updated = await api.patch(
            self.url(ios_app, "crm"),
            headers=ios_app.headers(),
            json={"audience_pattern": r"(?P<name>\w+)\.csv", "on_change": "apply_changes"},
        )
        assert updated.status_code == 200, updated.text
        assert (updated.json()["audience_name"], updated.json()["on_change"]) == (
            None,
            "apply_changes",
        )
        run = await api.post(self.url(ios_app, "crm") + "/run", headers=ios_app.headers())
        assert run.status_code == 202
        runs = await api.get(self.url(ios_app, "crm") + "/runs", headers=ios_app.headers())
        assert runs.json() == []

        deleted = await api.delete(self.url(ios_app, "crm"), headers=ios_app.headers())
        assert deleted.status_code == 204
        gone = await api.get(self.url(ios_app, "crm"), headers=ios_app.headers())
        error(gone, 404, 20)

    async def test_another_company_cannot_see_the_source(
        self, api: httpx.AsyncClient, ios_app: ClientApp, android_app: ClientApp
    ) -> None:
        body = {"name": "crm", "url": "s3://b/p", "id_type": "custom_ids", "audience_name": "a"}
        await api.post(self.url(ios_app), headers=ios_app.headers(), json=body)
        foreign = await api.get(self.url(ios_app, "crm"), headers=android_app.headers())
        assert foreign.status_code == 401
        own = await api.get(self.url(android_app, "crm"), headers=android_app.headers())
        error(own, 404, 20)


class TestUpload:
    def url(self, app: ClientApp, name: str) -> str:
        return f"/1.0/{app.api_key}/custom-audience/{name}/file"

    async def test_a_csv_upload_creates_or_replaces_the_audience(
        self, api: httpx.AsyncClient, ios_app: ClientApp, runtime: Runtime
    ) -> None:
        await add_installs(runtime, ios_app, 1, custom_id="u1")
        response = await api.put(
            self.url(ios_app, "uploaded"),
            headers=ios_app.headers(),
            params={"header": "true"},
            content=b"custom_id\nu1\nu2\nu2\nnot valid\n",
        )
        assert response.status_code == 202, response.text
        result = response.json()
        assert (result["nb_ids"], result["lines_read"], result["ids_rejected"]) == (2, 5, 1)
        assert result["first_rejections"] == [{"line": 5, "reason": "not a valid custom id"}]
        assert await estimate(api, ios_app, ["uploaded"]) == 1

        replaced = await api.put(
            self.url(ios_app, "uploaded"), headers=ios_app.headers(), content=b"u3\n"
        )
        assert replaced.json()["nb_ids"] == 1
        assert await estimate(api, ios_app, ["uploaded"]) == 0

    async def test_a_malformed_upload_changes_nothing(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        await api.put(self.url(ios_app, "kept"), headers=ios_app.headers(), content=b"a\nb\n")
        response = await api.put(
            self.url(ios_app, "kept"), headers=ios_app.headers(), content=b"c\nd|e\n"
        )
        assert (
            error(response, 400, 31)
            == "MALFORMED_PARAMETER: file: line 2: mixed delimiters: '|' in a file delimited by ','"
        )
        assert await members(api, ios_app, "kept") == 2

    async def test_an_empty_upload_is_refused_without_a_line_number(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        response = await api.put(self.url(ios_app, "none"), headers=ios_app.headers(), content=b"")
        assert error(response, 400, 31) == "MALFORMED_PARAMETER: file: the file is empty"

    async def test_an_over_long_line_is_refused_naming_it(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        await api.put(self.url(ios_app, "kept"), headers=ios_app.headers(), content=b"a\nb\n")
        for long_line in (b" " * (MAX_LINE_BYTES + 1), b"c," * MAX_LINE_BYTES):
            response = await api.put(
                self.url(ios_app, "kept"),
                headers=ios_app.headers(),
                content=b"c\nd\n" + long_line + b"\ne\n",
            )
            assert error(response, 400, 31).startswith(
                "MALFORMED_PARAMETER: file: line 3: line longer than 65536 bytes"
            )
        assert await members(api, ios_app, "kept") == 2

    async def test_the_parse_leaves_the_event_loop_free(
        self, api: httpx.AsyncClient, ios_app: ClientApp, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The parser is held at its first block (a gate around the real `feed`, which then
        runs unchanged) while another call is made: it is answered before the gate opens.
        Parsing on the event loop, the held parser would hold the loop, and the other call
        would wait for the gate's safety timeout."""
        entered, release = threading.Event(), threading.Event()
        opened: list[bool] = []
        feed = IdFileParser.feed

        def gated(parser: IdFileParser, chunk: bytes) -> list[str]:
            if not opened:
                entered.set()
                opened.append(release.wait(timeout=30))
            return feed(parser, chunk)

        monkeypatch.setattr(IdFileParser, "feed", gated)
        upload = asyncio.create_task(
            api.put(self.url(ios_app, "held"), headers=ios_app.headers(), content=b"a\nb\n")
        )
        assert await asyncio.to_thread(entered.wait, 30)
        other = await api.get(f"/1.0/{ios_app.api_key}/imports", headers=ios_app.headers())
        assert other.status_code == 200
        release.set()
        assert (await upload).status_code == 202
        assert opened == [True]  # the gate was opened by this test, not by its timeout


class TestRecovery:
    async def test_a_run_left_running_by_a_stopped_process_is_closed_at_the_next_poll(
        self,
        request: pytest.FixtureRequest,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runtime: Runtime,
        runner: ImportRunner,
        local_root: Path,
    ) -> None:
        drop = folder_on("file", request, local_root / str(ios_app.app_id))
        source = await create_source(api, ios_app, drop)
        async with transaction(runtime.sessions) as session:
            source_id = await session.scalar(
                select(ImportSource.id).where(
                    ImportSource.app_id == ios_app.app_id, ImportSource.name == source["name"]
                )
            )
            session.add(ImportRun(source_id=source_id, path="/gone.csv", status="running"))

        await runner.run_source(app_id=ios_app.app_id, name="crm")

        async with runtime.sessions() as session:
            stale = await session.scalar(select(ImportRun).where(ImportRun.path == "/gone.csv"))
        assert stale is not None
        assert stale.status == "failed"
        assert "interrupted" in (stale.error or "")

    async def test_a_file_that_failed_is_read_again_once_the_settings_change(
        self,
        request: pytest.FixtureRequest,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runner: ImportRunner,
        local_root: Path,
    ) -> None:
        drop = folder_on("file", request, local_root / str(ios_app.app_id))
        drop.put("ids.csv", b"user\na\nb\n")
        await create_source(api, ios_app, drop, id_column="id")
        assert one(await runner.run_source(app_id=ios_app.app_id, name="crm")).status == "failed"
        assert await runner.run_source(app_id=ios_app.app_id, name="crm") == []

        await api.patch(
            f"/1.0/{ios_app.api_key}/imports/crm",
            headers=ios_app.headers(),
            json={"id_column": "user"},
        )

        assert one(await runner.run_source(app_id=ios_app.app_id, name="crm")).status == (
            "succeeded"
        )
        assert await members(api, ios_app) == 2

    async def test_apply_changes_starts_over_when_the_audience_was_deleted(
        self,
        request: pytest.FixtureRequest,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runner: ImportRunner,
        local_root: Path,
    ) -> None:
        drop = folder_on("file", request, local_root / str(ios_app.app_id))
        drop.put("ids.csv", b"id\na\nb\n")
        await create_source(api, ios_app, drop, on_change="apply_changes")
        one(await runner.run_source(app_id=ios_app.app_id, name="crm"))
        deleted = await api.delete(
            f"/1.0/{ios_app.api_key}/custom-audience/from-file", headers=ios_app.headers()
        )
        assert deleted.status_code == 200

        drop.put("ids.csv", b"id\nb\nc\nd\n")
        run = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

        assert (run.added, run.removed, run.nb_ids) == (3, 0, 3)  # b, c, d: not only c and d

    async def test_a_header_only_file_does_not_empty_the_audience(
        self,
        request: pytest.FixtureRequest,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runner: ImportRunner,
        local_root: Path,
    ) -> None:
        drop = folder_on("file", request, local_root / str(ios_app.app_id))
        drop.put("ids.csv", b"id\na\n")
        await create_source(api, ios_app, drop)
        one(await runner.run_source(app_id=ios_app.app_id, name="crm"))
        drop.put("ids.csv", b"id\r\n")

        run = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

        assert (run.status, run.error) == ("failed", "line 1: no id in the file")
        assert await members(api, ios_app) == 1


class TestConfinement:
    async def test_a_symbolic_link_out_of_the_allowed_folder_is_not_read(
        self,
        request: pytest.FixtureRequest,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        runner: ImportRunner,
        local_root: Path,
        tmp_path: Path,
    ) -> None:
        secret = tmp_path / "elsewhere.csv"
        secret.write_bytes(b"id\nsecret-1\n")
        drop = folder_on("file", request, local_root / str(ios_app.app_id))
        drop.put("ids.csv", b"id\na\n")
        folder = local_root / str(ios_app.app_id) / drop.url.rsplit("/", 1)[1]
        (folder / "link.csv").symlink_to(secret)
        await create_source(api, ios_app, drop)

        runs = await runner.run_source(app_id=ios_app.app_id, name="crm")

        assert [(run.path or "").rsplit("/", 1)[1] for run in runs] == ["ids.csv"]

    async def test_another_apps_folder_is_out_of_reach(
        self,
        request: pytest.FixtureRequest,
        api: httpx.AsyncClient,
        ios_app: ClientApp,
        android_app: ClientApp,
        runner: ImportRunner,
        local_root: Path,
    ) -> None:
        theirs = folder_on("file", request, local_root / str(android_app.app_id))
        theirs.put("ids.csv", b"id\nsomeone\n")
        await create_source(api, ios_app, theirs)

        run = one(await runner.run_source(app_id=ios_app.app_id, name="crm"))

        assert run.status == "failed"
        assert "allowed folders" in (run.error or "")

    async def test_moving_a_source_to_another_host_needs_the_credentials_again(
        self, api: httpx.AsyncClient, ios_app: ClientApp
    ) -> None:
        body = {
            "name": "crm",
            "url": "sftp://files.example.com/out",
            "credentials": {"username": "u", "password": "pw"},
            "id_type": "custom_ids",
            "audience_name": "a",
        }
        await api.post(f"/1.0/{ios_app.api_key}/imports", headers=ios_app.headers(), json=body)
        url = f"/1.0/{ios_app.api_key}/imports/crm"

        moved = await api.patch(
            url, headers=ios_app.headers(), json={"url": "sftp://attacker.example.net/x"}
        )
        same_host = await api.patch(
            url, headers=ios_app.headers(), json={"url": "sftp://files.example.com/other"}
        )

        assert "credentials" in error(moved, 400, 31)
        assert same_host.status_code == 200
