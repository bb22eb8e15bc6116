"""The id-file parser alone: a large one-column file fed to IdFileParser in the chunks an import
reads (256 KiB), timed in process with no storage or database, and the throughput printed.

Three files: the common one (one custom id per line), the same with a header and three columns
(the csv module's path), and the same ids padded with spaces and blank lines of spaces (the
shape that made the old regular expression backtrack).

    .venv/bin/python -m bench.idfile_parse --lines 2000000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from clarion.audiences.models import AudienceKind
from clarion.connectors.idfile import IdFileFormat, IdFileParser
from clarion.connectors.service import READ_CHUNK


def one_column(lines: int) -> bytes:
    return "".join(f"user-{n:09d}\n" for n in range(lines)).encode()


def three_columns(lines: int) -> bytes:
    rows = "".join(f"user-{n:09d},{n}@example.com,Lyon\n" for n in range(lines))
    return ("custom_id,email,city\n" + rows).encode()


def padded(lines: int) -> bytes:
    return "".join(f"  user-{n:09d} \r\n{' ' * 8}\n" for n in range(lines // 2)).encode()


def parse(data: bytes, file_format: IdFileFormat) -> int:
    parser = IdFileParser(file_format)
    count = 0
    for start in range(0, len(data), READ_CHUNK):
        count += len(parser.feed(data[start : start + READ_CHUNK]))
    return count + len(parser.close())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    cases: list[tuple[str, Callable[[int], bytes], IdFileFormat]] = [
        ("one column", one_column, IdFileFormat(AudienceKind.CUSTOM_IDS, header=False)),
        ("three columns", three_columns, IdFileFormat(AudienceKind.CUSTOM_IDS, column="custom_id")),
        ("padded", padded, IdFileFormat(AudienceKind.CUSTOM_IDS, header=False)),
    ]
    for name, make, file_format in cases:
        data = make(args.lines)
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            ids = parse(data, file_format)
            best = min(best, time.perf_counter() - started)
        print(
            f"{name:14} {len(data) / 2**20:7.1f} MiB {ids:>10,} ids  {best:6.3f} s  "
            f"{len(data) / 2**20 / best:6.1f} MiB/s  {ids / best / 1e6:5.2f} M ids/s"
        )


if __name__ == "__main__":
    main()
