"""Reading one file through Clarion's storage interface (fsspec) from each local server, and
from S3 through Apache OpenDAL for comparison (docs/decisions/0012-file-connectors.md).

OpenDAL is not a dependency: `pip install opendal` to include it.

    .venv/bin/python -m bench.storage_read --mb 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import report
from clarion.storage import READ_BLOCK, Storage, StorageCredentials
from tests.support.simulator import LOCAL_SERVERS_POLICY
from tests.support.storage_servers import running_ftp, running_ftps, running_s3, running_sftp


def timed_read(open_file: Callable[[], Any]) -> dict[str, float]:
    started = time.monotonic()
    total = 0
    with open_file() as stream:
        while chunk := stream.read(READ_BLOCK):
            total += len(chunk)
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 2), "mb_per_s": round(total / 1e6 / seconds, 1)}


def through_clarion(url: str, credentials: StorageCredentials, ca: str | None) -> dict[str, float]:
    # The servers listen on 127.0.0.1, which the outbound policy refuses unless allowed.
    with Storage(url, credentials, ca_file=ca, outbound=LOCAL_SERVERS_POLICY) as storage:
        (remote,) = storage.list("data.bin")
        return timed_read(lambda: storage.open_read(remote.path))


def through_opendal(s3: Any) -> dict[str, float] | str:
    try:
        import opendal
    except ImportError:
        return "not installed"
    operator = opendal.Operator(
        "s3",
        bucket=s3.bucket,
        endpoint=s3.endpoint_url,
        region=s3.region,
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
    )
    return timed_read(lambda: operator.open("bench/data.bin", "rb"))


def run(megabytes: int, tmp: Path) -> dict[str, Any]:
    data = (b"user-000000001\n" * (1024 * 1024 // 15 + 1))[: 1024 * 1024] * megabytes
    figures: dict[str, Any] = {"file_mb": round(len(data) / 1e6)}
    with ExitStack() as stack:
        s3 = stack.enter_context(running_s3(tmp / "s3"))
        s3.put_bytes("bench/data.bin", data)
        s3_credentials = StorageCredentials(
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            region=s3.region,
            endpoint_url=s3.endpoint_url,
        )
        figures["s3_fsspec"] = through_clarion(f"s3://{s3.bucket}/bench", s3_credentials, None)
        figures["s3_opendal"] = through_opendal(s3)
        for name, starter in (("sftp", running_sftp), ("ftp", running_ftp), ("ftps", running_ftps)):
            server = stack.enter_context(starter(tmp / name))
            (server.root / "bench").mkdir()
            (server.root / "bench" / "data.bin").write_bytes(data)
            credentials = StorageCredentials(username=server.username, password=server.password)
            url = f"{name}://{server.host}:{server.port}/bench"
            ca = str(server.ca_file) if name == "ftps" else None
            figures[f"{name}_fsspec"] = through_clarion(url, credentials, ca)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args.mb, Path(tmp))
    report("storage_read", figures)


if __name__ == "__main__":
    main()
