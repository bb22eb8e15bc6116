"""Smoke test of the local storage servers: each lists, reads, writes and deletes through fsspec,
the way the flat-file connectors and daily exports will use them."""

from __future__ import annotations

import ftplib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import fsspec
import pytest

if TYPE_CHECKING:  # importing the plugin before pytest registers it would skip its rewriting
    from tests.support.storage_servers import (
        FtpServer,
        FtpsServer,
        GcsServer,
        HttpsServer,
        S3Server,
        SftpServer,
    )

CSV = b"token,name\nabc,Ada\n"


def _seed(root: Path, folder: str) -> None:
    (root / folder).mkdir()
    (root / folder / "a.csv").write_bytes(CSV)


def test_s3(s3_server: S3Server) -> None:
    bucket = s3_server.bucket
    s3_server.put_bytes("s3/a.csv", CSV)
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options())

    assert fs.ls(f"{bucket}/s3", detail=False) == [f"{bucket}/s3/a.csv"]
    assert fs.cat_file(f"{bucket}/s3/a.csv") == CSV
    fs.pipe_file(f"{bucket}/s3/b.csv", b"written")
    assert s3_server.client.get_object(Bucket=bucket, Key="s3/b.csv")["Body"].read() == b"written"
    fs.rm_file(f"{bucket}/s3/b.csv")
    s3_server.delete("s3/a.csv")
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/s3/b.csv")
    assert not fs.exists(f"{bucket}/s3/a.csv")


def test_gcs(gcs_server: GcsServer) -> None:
    bucket = gcs_server.bucket
    gcs_server.put_bytes("gcs/a.csv", CSV)
    fs = fsspec.filesystem("gs", skip_instance_cache=True, **gcs_server.storage_options())
    assert type(fs).__module__ == "gcsfs.core"  # not the experimental one, which probes gRPC
    folder = f"gs://{bucket}/gcs"

    assert fs.ls(folder, detail=False) == [f"{bucket}/gcs/a.csv"]
    assert fs.cat_file(f"{folder}/a.csv") == CSV
    with fs.open(f"{folder}/.b.csv.part", "wb") as out:
        out.write(b"written")
    fs.mv(f"{folder}/.b.csv.part", f"{folder}/b.csv")  # objects.move: one server-side rename
    assert gcs_server.read_bytes("gcs/b.csv") == b"written"
    assert not gcs_server.exists("gcs/.b.csv.part")
    fs.rm_file(f"{folder}/b.csv")
    gcs_server.delete("gcs/a.csv")
    fs.invalidate_cache()
    assert not fs.exists(f"{folder}/b.csv")
    assert not fs.exists(f"{folder}/a.csv")


def test_gcs_refuses_an_upload_to_a_missing_bucket(gcs_server: GcsServer) -> None:
    fs = fsspec.filesystem("gs", skip_instance_cache=True, **gcs_server.storage_options())

    # gcsfs turns GCS's 404 into FileNotFoundError naming the upload URL, hence the bucket.
    with pytest.raises(FileNotFoundError, match="/b/no-such-bucket/o"):
        fs.pipe_file("gs://no-such-bucket/a.csv", b"written")
    with (
        pytest.raises(FileNotFoundError, match="/b/no-such-bucket/o"),
        fs.open("gs://no-such-bucket/a.csv", "wb") as out,
    ):
        out.write(b"written")  # nothing is sent before the file is closed
    assert not fs.exists("gs://no-such-bucket")  # and no bucket was made on the way


def test_sftp(sftp_server: SftpServer) -> None:
    _seed(sftp_server.root, "sftp")
    fs = fsspec.filesystem("sftp", skip_instance_cache=True, **sftp_server.storage_options())

    assert fs.ls("/sftp", detail=False) == ["/sftp/a.csv"]
    assert fs.cat_file("/sftp/a.csv") == CSV
    fs.pipe_file("/sftp/b.csv", b"written")
    assert (sftp_server.root / "sftp" / "b.csv").read_bytes() == b"written"
    fs.rm_file("/sftp/b.csv")
    assert not (sftp_server.root / "sftp" / "b.csv").exists()


def test_sftp_refuses_a_wrong_password(sftp_server: SftpServer) -> None:
    options = {**sftp_server.storage_options(), "password": "wrong"}
    with pytest.raises(PermissionError):  # sshfs's translation of asyncssh.PermissionDenied
        fsspec.filesystem("sftp", skip_instance_cache=True, **options)


def _ftp_round_trip(server: FtpServer, folder: str) -> None:
    _seed(server.root, folder)
    fs = fsspec.filesystem("ftp", **server.storage_options())

    # fsspec's FTP ls(detail=False) gives bare names; detail=True gives full paths.
    assert [entry["name"] for entry in fs.ls(f"/{folder}")] == [f"/{folder}/a.csv"]
    assert fs.cat_file(f"/{folder}/a.csv") == CSV
    fs.pipe_file(f"/{folder}/b.csv", b"written")
    assert (server.root / folder / "b.csv").read_bytes() == b"written"
    fs.rm_file(f"/{folder}/b.csv")
    assert not (server.root / folder / "b.csv").exists()


def test_ftp(ftp_server: FtpServer) -> None:
    _ftp_round_trip(ftp_server, "ftp")


def test_ftps(ftps_server: FtpsServer) -> None:
    _ftp_round_trip(ftps_server, "ftps")  # fsspec's tls=True does not verify the certificate

    # What the product does: a verifying context trusting the test CA.
    with ftplib.FTP_TLS(context=ftps_server.ssl_context(), timeout=10) as ftp:
        ftp.connect(ftps_server.host, ftps_server.port)
        ftp.login(ftps_server.username, ftps_server.password)
        ftp.prot_p()
        assert ftp.nlst("/ftps") == ["a.csv"]
    with ftplib.FTP_TLS(context=ssl.create_default_context(), timeout=10) as ftp:
        ftp.connect(ftps_server.host, ftps_server.port)
        with pytest.raises(ssl.SSLCertVerificationError):
            ftp.auth()  # the system CAs do not know the test CA: verification is real


def test_https(https_server: HttpsServer) -> None:
    _seed(https_server.root, "https")
    fs = fsspec.filesystem("https", skip_instance_cache=True, **https_server.storage_options())
    url = https_server.url("https/a.csv")

    assert fs.ls(https_server.url("https/"), detail=False) == [url]
    assert fs.cat_file(url) == CSV
    assert fs.cat_file(url, start=6, end=10) == CSV[6:10]  # a real 206 range answer
    info = fs.info(url)
    assert info["size"] == len(CSV)
    assert info["ETag"]
    assert info["Last-Modified"]
    # A static server: "writing" and "deleting" happen in its directory, seen through HTTP.
    (https_server.root / "https" / "b.csv").write_bytes(b"written")
    assert fs.cat_file(https_server.url("https/b.csv")) == b"written"
    (https_server.root / "https" / "b.csv").unlink()
    with pytest.raises(FileNotFoundError):
        fs.cat_file(https_server.url("https/b.csv"))

    anonymous = fsspec.filesystem("https", skip_instance_cache=True, ssl=https_server.ssl_context())
    with pytest.raises(aiohttp.ClientResponseError) as refused:
        anonymous.cat_file(url)
    assert refused.value.status == 401


@pytest.mark.parametrize("kind", ["s3", "sftp", "file"])
def test_a_write_that_fails_midway_publishes_nothing(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Clarion's Storage.write: a failing source of chunks leaves no file, whole or partial."""
    from clarion.storage import Storage, StorageCredentials, StorageError
    from tests.support.simulator import LOCAL_SERVERS_POLICY

    folder = f"w{tmp_path.name[-6:]}"
    if kind == "s3":
        s3 = request.getfixturevalue("s3_server")
        url = f"s3://{s3.bucket}/{folder}"
        credentials = StorageCredentials(
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            region=s3.region,
            endpoint_url=s3.endpoint_url,
        )
        roots: tuple[Path, ...] = ()
    elif kind == "sftp":
        sftp = request.getfixturevalue("sftp_server")
        (sftp.root / folder).mkdir()
        url = f"sftp://{sftp.host}:{sftp.port}/{folder}"
        credentials = StorageCredentials(username=sftp.username, password=sftp.password)
        roots = ()
    else:
        (tmp_path / folder).mkdir()
        url, credentials, roots = f"file://{tmp_path / folder}", StorageCredentials(), (tmp_path,)

    def chunks() -> Iterator[bytes]:
        for _ in range(6):  # past one S3 part
            yield b"x" * (1024 * 1024)
        raise RuntimeError("the query failed")

    with Storage(url, credentials, local_roots=roots, outbound=LOCAL_SERVERS_POLICY) as storage:
        with pytest.raises(StorageError, match="the query failed"):
            storage.write("day.csv", chunks())
        assert storage.list() == []
        storage.write("day.csv", iter([b"whole\n"]))
        assert [remote.name for remote in storage.list()] == ["day.csv"]
