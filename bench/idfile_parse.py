"""The id-file parser alone: a large one-column file fed to IdFileParser in the chunks an import
reads (256 KiB), timed in process with no storage or database, and the throughput printed.

Three files: the common one (one custom id per line), the same with a header and three columns
(the csv module's path), and the same ids padded with spaces and blank lines of spaces (the
shape that made the old regular expression backtrack). With --against REV, the parser of that
git revision runs too, interleaved with today's (the machine's load hits both alike).

    .venv/bin/python -m bench.idfile_parse --lines 2000000 --against f285de0
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from bench.common import ROOT, report
from clarion.audiences.models import AudienceKind
from clarion.imports import idfile
from clarion.imports.service import READ_CHUNK


def one_column(lines: int) -> bytes:
    return "".join(f"user-{n:09d}\n" for n in range(lines)).encode()


def three_columns(lines: int) -> bytes:
    rows = "".join(f"user-{n:09d},{n}@example.com,Lyon\n" for n in range(lines))
    return ("custom_id,email,city\n" + rows).encode()


def padded(lines: int) -> bytes:
    return "".join(f"  user-{n:09d} \r\n{' ' * 8}\n" for n in range(lines // 2)).encode()


def parser_at(revision: str) -> ModuleType:
    """clarion/imports/idfile.py as it was at `revision` (clarion/connectors/idfile.py before the
    folders took the capabilities' names), imported under another name."""
    for where in ("clarion/imports/idfile.py", "clarion/connectors/idfile.py"):
        shown = subprocess.run(
            ["git", "show", f"{revision}:{where}"], cwd=ROOT, check=False, capture_output=True
        )
        if shown.returncode == 0:
            break
    shown.check_returncode()
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / "idfile_then.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("idfile_then", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def parse(module: ModuleType, data: bytes, kind: AudienceKind, **options: object) -> int:
    parser = module.IdFileParser(module.IdFileFormat(kind, **options))
    count = 0
    for start in range(0, len(data), READ_CHUNK):
        count += len(parser.feed(data[start : start + READ_CHUNK]))
    closed: list[str] = parser.close()
    return count + len(closed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs")
    parser.add_argument("--against", metavar="REV", help="also time the parser of this revision")
    args = parser.parse_args()
    parsers = {"now": idfile}
    if args.against:
        parsers[args.against] = parser_at(args.against)
    # (name, file maker, parser options, ids the file holds)
    cases: list[tuple[str, Callable[[int], bytes], dict[str, object], int]] = [
        ("one column", one_column, {"header": False}, args.lines),
        ("three columns", three_columns, {"column": "custom_id"}, args.lines),
        ("padded", padded, {"header": False}, args.lines // 2),
    ]
    figures: dict[str, dict[str, float]] = {}
    for name, make, options, expected in cases:
        data = make(args.lines)
        best = dict.fromkeys(parsers, float("inf"))
        ids = 0
        for repeat in range(args.repeat):
            # Each goes first in turn: the one after ran ~5% faster, the heap warmed for it.
            for label, module in list(parsers.items())[:: 1 if repeat % 2 else -1]:
                started = time.perf_counter()
                ids = parse(module, data, AudienceKind.CUSTOM_IDS, **options)
                best[label] = min(best[label], time.perf_counter() - started)
                if ids != expected:  # a rate of a parser that lost or invented ids means nothing
                    raise SystemExit(f"{name}, {label}: {ids:,} ids, the file has {expected:,}")
        for label, seconds in best.items():
            figures[f"{name}, {label}"] = {
                "mib": round(len(data) / 2**20, 1),
                "ids": ids,
                "seconds": round(seconds, 3),
                "mib_per_s": round(len(data) / 2**20 / seconds, 1),
            }
    report("idfile_parse", figures)


if __name__ == "__main__":
    main()
