"""What a targeting query costs at and past its size limits (clarion/targeting/query.py):
parsing and building the clause in process, then compiling, planning and running
`SELECT count(*)` over installations on an empty database (planning is what grows).

    .venv/bin/python -m bench.query_limits --db postgres --sizes 8 16 32 50 64 100
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import sqlalchemy
from sqlalchemy import func, select

import clarion.models  # noqa: F401  (every table)
from bench.common import fresh_database, report
from clarion.db import Base, sync_url
from clarion.sdk.models import Installation
from clarion.targeting import query as query_module
from clarion.targeting.compile import QueryCompiler
from clarion.targeting.query import MAX_LIST, MAX_VALUES, parse_query

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def queries(size: int) -> dict[str, dict[str, Any]]:
    return {
        "and": {"$and": [{f"c.p{i}": i} for i in range(size)]},
        "or": {"$or": [{f"c.p{i}": i} for i in range(size)]},
        "contains": {"t.x": {"$contains": [f"t{i}" for i in range(size)]}},
        "in_values_budget": {
            "$and": [
                {f"c.p{i}": {"$in": [f"v{j}" for j in range(MAX_LIST)]}}
                for i in range(MAX_VALUES // MAX_LIST)
            ]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 50])
    args = parser.parse_args()
    # Sizes past the limit are measured too: what the limit keeps out.
    query_module.MAX_CONDITIONS = max(query_module.MAX_CONDITIONS, *args.sizes)
    figures: dict[str, Any] = {}
    with ExitStack() as stack, TemporaryDirectory() as tmp:
        url = sync_url(fresh_database(stack, args.db, Path(tmp)))
        engine = sqlalchemy.create_engine(url)
        Base.metadata.create_all(engine)
        for size in args.sizes:
            for name, query in queries(size).items():
                started = time.perf_counter()
                clause = QueryCompiler(app_id=1, now=NOW).node(parse_query(query))
                built = time.perf_counter()
                with engine.connect() as connection:
                    matched = connection.execute(
                        select(func.count())
                        .select_from(Installation)
                        .where(Installation.app_id == 1, clause)
                    ).scalar_one()
                ran = time.perf_counter()
                if matched != 0:  # the database is empty: anything else is a wrong clause
                    raise SystemExit(f"{name}_{size}: matched {matched} in an empty database")
                figures[f"{name}_{size}"] = {
                    "parse_build_ms": round(1000 * (built - started), 1),
                    "compile_plan_run_ms": round(1000 * (ran - built), 1),
                }
        engine.dispose()
    report(f"query_limits_{args.db}", figures)


if __name__ == "__main__":
    main()
