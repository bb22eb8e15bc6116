"""Events matched and entered into automations (issue 20's first figure): Trigger Events API
bulk calls (1,000 events each) through one `clarion serve --no-workers` process, against an app
with 100 live automations.

Three phases, each N calls of 1,000 events (1,000 users, one event each, a few calls in flight
from a client pinned to the other core):

1. baseline: the same calls to an app without automations (what storing the events costs);
2. enter: the app with 100 automations (20 trigger names, 5 automations on each: no
   condition, an attribute, a label, once_per_days, two attributes; cancel events on three of
   the five, two of them with match_attribute "sku"); a fifth of the events name no trigger;
3. cancel: for every user who entered, the cancel event of their trigger with the same sku.

Before printing a rate it checks the database: entries per automation equal what the trigger
definitions say each event should do (computed here from the definitions, not by Clarion's
code), no user entered an automation twice, every entry of an automation with cancel events is
cancelled after phase 3 (reason the cancel event's name) and every other entry still pending.
The rates are events/s over each phase (HTTP, validation, storing the events and the entries),
and the server process's and PostgreSQL's CPU time per event (on a shared machine the
wall-clock rate moves with the neighbours' load, reported as load_average), so the events/s one
dedicated core reaches.

Matching reads no installation (server events enter custom user ids): the issue's 1,000,000
installations would change nothing here, so none are seeded.

    .venv/bin/python -m bench.automation_intake --db postgres
    .venv/bin/python -m bench.automation_intake --db postgres --calls 50
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from cryptography.fernet import Fernet

from bench.common import (
    backends_cpu,
    cpu_seconds,
    fresh_database,
    pin,
    port_free,
    report,
    serve_clarion,
)
from clarion.db import sync_url

API_PORT = int(os.environ.get("CLARION_BENCH_API_PORT", "18006"))
EVENTS_PER_CALL = 1_000
TRIGGER_NAMES = 20  # ue.trigger_0 .. ue.trigger_19 enter users; ue.trigger_20..24 no one
EVENT_NAMES = 25
AUTOMATIONS = 100


def trigger_of(k: int) -> dict[str, Any]:
    """Automation k: trigger ue.trigger_{k % 20}, its kind (k // 20) chooses the rest."""
    name, kind = k % TRIGGER_NAMES, k // TRIGGER_NAMES
    trigger: dict[str, Any] = {"event": f"ue.trigger_{name}", "delay_seconds": 3600 * (1 + kind)}
    cancel = f"ue.cancel_{name}"
    if kind == 0:
        trigger["cancel_events"] = [{"event": cancel, "match_attribute": "sku"}]
    elif kind == 1:
        trigger["attributes"] = {"tier": "gold"}
        trigger["cancel_events"] = [{"event": cancel}]
    elif kind == 2:
        trigger["label"] = "web"
    elif kind == 3:
        trigger["once_per_days"] = 1
        trigger["at_local_time"] = "18:30"
    else:
        trigger["attributes"] = {"tier": "gold", "amount": 10}
        trigger["cancel_events"] = [{"event": cancel, "match_attribute": "sku"}]
    return trigger


def event_of(i: int) -> dict[str, Any]:
    """The i-th event of a call (each call's users are new: no entry rule blocks one)."""
    event: dict[str, Any] = {
        "name": f"ue.trigger_{i % EVENT_NAMES}",
        "attributes": {
            "tier": "gold" if i % 2 else "silver",
            "amount": 10 if i % 4 == 1 else 5,
            "sku": f"sku-{i % 7}",
        },
    }
    if i % 3 == 0:
        event["label"] = "web"
    return event


def enters(trigger: dict[str, Any], event: dict[str, Any]) -> bool:
    """The bench's own reading of a trigger's condition (equality on label and attributes)."""
    if event["name"] != trigger["event"]:
        return False
    if "label" in trigger and event.get("label") != trigger["label"]:
        return False
    return all(event["attributes"].get(a) == v for a, v in trigger.get("attributes", {}).items())


def bodies(calls: int, prefix: str) -> list[list[dict[str, Any]]]:
    return [
        [{"id": f"{prefix}-{call}-{i}", "events": [event_of(i)]} for i in range(EVENTS_PER_CALL)]
        for call in range(calls)
    ]


def cancels(calls: int, prefix: str) -> list[list[dict[str, Any]]]:
    """The cancel event of each user's trigger, same sku (users of triggers 20-24 get one too:
    it cancels nothing)."""
    found = []
    for call in range(calls):
        body = []
        for i in range(EVENTS_PER_CALL):
            event = event_of(i)
            name = event["name"].replace("trigger", "cancel")
            cancel = {"name": name, "attributes": {"sku": event["attributes"]["sku"]}}
            body.append({"id": f"{prefix}-{call}-{i}", "events": [cancel]})
        found.append(body)
    return found


def clarion_cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "clarion.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def new_app(env: dict[str, str], name: str) -> dict[str, Any]:
    created: dict[str, Any] = json.loads(
        clarion_cli(env, "apps", "create", "--name", name, "--platform", "ios")
    )
    return created


def post_all(
    endpoint: str, headers: dict[str, str], calls: list[list[dict[str, Any]]], in_flight: int
) -> None:
    with httpx.Client(headers=headers, timeout=120) as client:

        def post(body: list[dict[str, Any]]) -> None:
            response = client.post(endpoint, json=body)
            if response.status_code != 202:
                raise SystemExit(f"{response.status_code}: {response.text[:300]}")

        with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
            list(pool.map(post, calls))


def timed_phase(
    server: int,
    url: str,
    endpoint: str,
    headers: dict[str, str],
    calls: list[list[dict[str, Any]]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    postgres = args.db == "postgres"
    backends_before = backends_cpu(url) if postgres else {}
    cpu_before = cpu_seconds(server)
    started = time.monotonic()
    post_all(endpoint, headers, calls, args.in_flight)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(server) - cpu_before
    # Backends opened during the phase started from zero.
    database_cpu = sum(
        used - backends_before.get(pid, 0.0)
        for pid, used in (backends_cpu(url) if postgres else {}).items()
    )
    events = len(calls) * EVENTS_PER_CALL
    figures = {
        "events": events,
        "elapsed_s": round(elapsed, 2),
        "events_per_s": round(events / elapsed),
        "server_cpu_us_per_event": round(cpu / events * 1e6, 1),
        "events_per_s_per_dedicated_core": round(events / cpu),
    }
    if postgres:
        figures["postgres_cpu_us_per_event"] = round(database_cpu / events * 1e6, 1)
    return figures


def entry_states(url: str, app_id: int) -> dict[tuple[int, str], int]:
    with sa.create_engine(sync_url(url)).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT campaign_id, state, count(*) FROM automation_entries WHERE app_id = :app"
                " GROUP BY campaign_id, state"
            ),
            {"app": app_id},
        ).all()
    return {(campaign, state): count for campaign, state, count in rows}


def entered_twice(url: str, app_id: int) -> list[tuple[int, str, int]]:
    """(automation, user, entries) for each user entered more than once into an automation:
    every user of the bench sends one trigger event, so none should be."""
    with sa.create_engine(sync_url(url)).connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT campaign_id, custom_id, count(*) FROM automation_entries"
                " WHERE app_id = :app GROUP BY campaign_id, custom_id HAVING count(*) > 1"
                " LIMIT 10"
            ),
            {"app": app_id},
        ).all()
    return [(campaign, user, count) for campaign, user, count in rows]


def campaign_ids(url: str, app_id: int, tokens: list[str]) -> list[int]:
    with sa.create_engine(sync_url(url)).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT token, id FROM campaigns WHERE app_id = :app"), {"app": app_id}
        ).all()
    found: dict[str, int] = {token: campaign for token, campaign in rows}  # noqa: C416
    return [found[token] for token in tokens]


def run(args: argparse.Namespace, url: str, var: Path) -> dict[str, Any]:
    env = {
        "CLARION_DATABASE_URL": url,
        "CLARION_VAR_DIR": str(var),
        "CLARION_SECRET_KEY": Fernet.generate_key().decode(),
    }
    load_before = round(os.getloadavg()[0], 2)
    clarion_cli(env, "migrate")
    plain, automated = new_app(env, "baseline"), new_app(env, "automations")
    # One company (the first app created it): one REST key.
    rest_key = plain["rest_api_key"]
    base = f"http://127.0.0.1:{API_PORT}"
    port_free(API_PORT)
    server = serve_clarion(API_PORT, env, workers=False)
    try:
        pin(1)
        headers = {"X-Authorization": rest_key}
        tokens = []
        with httpx.Client(base_url=base, headers=headers) as client:
            for k in range(AUTOMATIONS):
                response = client.post(
                    f"/1.1/{automated['api_key']}/campaigns/create",
                    json={
                        "name": f"automation {k}",
                        "live": True,
                        "trigger": trigger_of(k),
                        "messages": [{"language": "en", "body": "{{ event.attributes.sku }}"}],
                    },
                )
                if response.status_code != 201:
                    raise SystemExit(f"automation {k}: {response.status_code} {response.text}")
                tokens.append(response.json()["campaign_token"])
        ids = campaign_ids(url, automated["id"], tokens)
        baseline_calls = bodies(args.calls, "b")
        enter_calls = bodies(args.calls, "u")
        cancel_calls = cancels(args.calls, "u")
        plain_url = base + "/1.0/{}/events/users".format(plain["api_key"])
        automated_url = base + "/1.0/{}/events/users".format(automated["api_key"])
        # Warm-up (the server's first calls import and compile): a call of each kind.
        post_all(
            plain_url,
            headers,
            bodies(2, "w"),
            1,
        )
        figures = {
            "baseline": timed_phase(
                server.pid,
                url,
                plain_url,
                headers,
                baseline_calls,
                args,
            ),
            "enter": timed_phase(server.pid, url, automated_url, headers, enter_calls, args),
        }
        entered = entry_states(url, automated["id"])
        figures["cancel"] = timed_phase(server.pid, url, automated_url, headers, cancel_calls, args)
        after = entry_states(url, automated["id"])
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    check(args.calls, ids, entered, after, plain_entries=entry_states(url, plain["id"]))
    twice = entered_twice(url, automated["id"])
    if twice:
        raise SystemExit(f"users entered twice into an automation: {twice}")
    expected = sum(entered.values())
    return {
        "db": args.db,
        # The machine's load (1-minute average) before and after: the wall-clock rates move
        # with it, the CPU per event much less.
        "load_average": [load_before, round(os.getloadavg()[0], 2)],
        "automations": AUTOMATIONS,
        "events_per_call": EVENTS_PER_CALL,
        "calls_per_phase": args.calls,
        "in_flight": args.in_flight,
        **figures,
        "entries_checked": expected,
        "cancelled_checked": sum(n for (_, state), n in after.items() if state == "cancelled"),
    }


def check(
    calls: int,
    ids: list[int],
    entered: dict[tuple[int, str], int],
    after: dict[tuple[int, str], int],
    *,
    plain_entries: dict[tuple[int, str], int],
) -> None:
    """Entries per automation as the definitions say; after the cancels, every entry of an
    automation with cancel events cancelled, the others pending."""
    if plain_entries:
        raise SystemExit(f"the app without automations has entries: {plain_entries}")
    expected: Counter[int] = Counter()
    for k, campaign in enumerate(ids):
        trigger = trigger_of(k)
        expected[campaign] = calls * sum(
            enters(trigger, event_of(i)) for i in range(EVENTS_PER_CALL)
        )
    found = Counter({campaign: n for (campaign, state), n in entered.items() if state == "pending"})
    if found != expected or any(state != "pending" for _, state in entered):
        raise SystemExit(f"entries differ from the definitions: {found} != {expected}")
    for k, campaign in enumerate(ids):
        state = "cancelled" if trigger_of(k).get("cancel_events") else "pending"
        wanted = {(campaign, state): expected[campaign]} if expected[campaign] else {}
        got = {key: n for key, n in after.items() if key[0] == campaign}
        if got != wanted:
            raise SystemExit(f"automation {k} after the cancels: {got} != {wanted}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--calls", type=int, default=100, help="per phase, 1,000 events each")
    parser.add_argument("--in-flight", type=int, default=2)
    args = parser.parse_args()
    with ExitStack() as stack:
        var = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = fresh_database(stack, args.db, var)
        figures = run(args, url, var)
    report(f"automation_intake_{args.db}", figures)


if __name__ == "__main__":
    main()
