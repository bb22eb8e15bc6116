"""Runs every benchmark with the sizes the issues name; results land in bench/results/*.json.

make bench            (or .venv/bin/python bench/run_all.py)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = [
    ["-m", "bench.delivery_throughput", "--devices", "200000", "--db", "sqlite"],
    ["-m", "bench.delivery_throughput", "--devices", "200000", "--db", "postgres"],
    ["-m", "bench.delivery_throughput", "--devices", "1000000", "--db", "postgres"],
    ["-m", "bench.transactional_api", "--sends", "10000", "--connections", "32"],
    ["-m", "bench.transactional_api", "--sends", "10000", "--connections", "32", "--api-only"],
    ["-m", "bench.transactional_backlog", "--sends", "3000"],
    ["-m", "bench.custom_data", "--db", "postgres", "--calls", "20"],
    ["-m", "bench.campaign_fanout", "--devices", "1000000", "--db", "postgres"],
    ["-m", "bench.campaign_fanout", "--devices", "1000000", "--db", "postgres", "--workers", "2"],
    ["-m", "bench.campaign_fanout", "--devices", "1000000", "--db", "postgres", "--fan-out-only"],
    ["-m", "bench.automation_dispatch", "--installations", "1000000"],
    ["-m", "bench.idfile_parse", "--lines", "2000000"],
    ["-m", "bench.query_limits", "--db", "postgres", "--sizes", "32", "50", "64"],
    ["-m", "bench.dashboard_pages", "--installs", "1000000", "--campaigns", "1000"],
    ["-m", "bench.automation_stats", "--db", "postgres"],
    ["-m", "bench.automation_stats", "--db", "sqlite"],
    ["-m", "bench.inapp_fetch", "--installations", "1000000"],
    ["-m", "bench.sdk_events", "--db", "sqlite"],
    ["-m", "bench.sdk_events", "--db", "postgres"],
    ["-m", "bench.websdk_setup", "--visits", "50"],
    ["-m", "bench.automation_intake", "--db", "postgres"],
    ["-m", "bench.event_retention", "--events", "10000000"],
    ["-m", "bench.event_retention", "--backend", "sqlite", "--events", "200000"],
    ["-m", "bench.rate_limit", "--postgres"],
    ["-m", "bench.delivery_recovery", "--kill", "4", "--installs", "100000"],
    ["-m", "bench.delivery_recovery", "--term", "4", "--installs", "100000"],
    ["-m", "bench.delivery_recovery", "--faults", "15", "--installs", "100000"],
    ["-m", "bench.slow_provider"],
    ["-m", "bench.audience_targeting", "--devices", "1000000"],
    ["-m", "bench.audience_file_ingest", "--lines", "10000000"],
    ["-m", "bench.daily_export", "--events", "10000000", "--installs", "1000000"],
    ["-m", "bench.storage_read", "--mb", "100"],
    ["-m", "bench.observability_overhead", "--runs", "3"],
    ["-m", "bench.scaled_out", "--installations", "1000000"],
    ["bench/sim_ceiling.py", "--baseline"],
    ["bench/http2_client.py", "--requests", "200000"],
]


def main() -> None:
    # Every benchmark runs even when one fails (a missed figure, counts that do not match):
    # the failures are listed at the end, and the exit status says there were some.
    failed = []
    for args in RUNS:
        print("==>", " ".join(args), flush=True)
        if subprocess.run([sys.executable, *args], cwd=ROOT).returncode != 0:
            failed.append(" ".join(args))
    if failed:
        raise SystemExit("failed:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
