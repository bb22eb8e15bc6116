"""Structured logs (clarion.logs) from a real `clarion serve`: with CLARION_LOG_FORMAT=json
every line on stderr is a JSON object; a request's lines carry its id (the caller's or a new
one, echoed in X-Request-Id) and its app's id; and no key appears, not even the app key Batch
puts in the path, nor the REST key of X-Authorization."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from clarion.logs import redact
from tests.support.simulator import free_port, stop_process_group
from tests.support.waiting import until

BIN = Path(sys.executable).parent


def environment(var: Path) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    return {
        **kept,
        "CLARION_VAR_DIR": str(var),
        "CLARION_LOG_FORMAT": "json",
        "CLARION_ACCESS_LOG": "true",
    }


@contextmanager
def serving(var: Path, log: Path) -> Iterator[str]:
    port = free_port()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(BIN / "clarion"), "serve", "--port", str(port), "--no-workers"],
            env=environment(var),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    try:
        until(ready, what="clarion serve ready", timeout=60)
        yield url
    finally:
        stop_process_group(process)


def lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def new_app(var: Path) -> dict[str, Any]:
    created = subprocess.run(
        [str(BIN / "clarion"), "apps", "create", "--name", "Logs", "--platform", "ios"],
        env=environment(var),
        capture_output=True,
        check=True,
    )
    app: dict[str, Any] = json.loads(created.stdout)
    return app


def access_lines(log: Path) -> dict[Any, dict[str, Any]]:
    return {
        line.get("request_id"): line for line in lines(log) if line["logger"] == "clarion.access"
    }


def test_json_lines_with_request_ids_and_no_keys(tmp_path: Path) -> None:
    var = tmp_path / "var"
    app = new_app(var)
    keys = [app["api_key"], app["dev_api_key"], app["rest_api_key"]]
    log = tmp_path / "serve.log"
    with serving(var, log) as url:
        headers = {"X-Authorization": app["rest_api_key"], "X-Request-Id": "req-42"}
        known = httpx.get(
            f"{url}/1.1/{app['api_key']}/transactional/sends/no-such-send", headers=headers
        )
        assert known.status_code == 404, known.text
        assert known.headers["x-request-id"] == "req-42"
        # A key that authenticates nothing is kept out of the logs all the same.
        unknown = httpx.post(
            f"{url}/1.1/{app['dev_api_key'][:-1]}X/transactional/send",
            headers={"X-Authorization": app["rest_api_key"]},
            json={},
        )
        assert unknown.status_code == 401, unknown.text
        generated = unknown.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        # Not an id (too long): replaced by one of ours.
        odd = httpx.get(f"{url}/healthz", headers={"X-Request-Id": "x" * 200})
        assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])

        until(lambda: len(access_lines(log)) >= 3, what="three access lines")
    text = log.read_text()
    for key in [*keys, app["dev_api_key"][:-1] + "X"]:
        assert key not in text
    written = lines(log)  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in written)
    by_id = access_lines(log)
    assert by_id["req-42"]["app_id"] == app["id"]
    assert by_id["req-42"]["send_token"] == "no-such-send"
    assert by_id["req-42"]["path"] == "/1.1/***/transactional/sends/no-such-send"
    assert by_id["req-42"]["status"] == 404
    assert by_id[generated]["path"] == "/1.1/***/transactional/send"
    assert by_id[generated]["status"] == 401
    assert "app_id" not in by_id[generated]


def test_the_sdk_fast_paths_lines_carry_the_app(tmp_path: Path) -> None:
    # The event batches and the in-app fetch are answered before routing (EventsFastPath,
    # FetchFastPath), without the SdkApp dependency that names the app on the route's lines.
    var = tmp_path / "var"
    app = new_app(var)
    push_token = secrets.token_hex(32)
    log = tmp_path / "serve.log"
    with serving(var, log) as url:
        installation = f"{url}/sdk/v1/{app['api_key']}/installations/fast-1"
        registered = httpx.put(installation, json={"push_token": push_token, "push_optin": True})
        assert registered.status_code == 200, registered.text
        tracked = httpx.post(
            f"{installation}/events",
            json={"events": [{"name": "tap"}]},
            headers={"X-Request-Id": "events"},
        )
        assert tracked.status_code == 202, tracked.text
        fetched = httpx.get(f"{installation}/inapp-messages", headers={"X-Request-Id": "fetch"})
        assert fetched.status_code == 200, fetched.text
        until(lambda: {"events", "fetch"} <= access_lines(log).keys(), what="their access lines")
    by_id = access_lines(log)
    assert by_id["events"]["app_id"] == by_id["fetch"]["app_id"] == app["id"]
    assert by_id["events"]["path"] == "/sdk/v1/***/installations/fast-1/events"
    text = log.read_text()
    assert app["api_key"] not in text
    assert push_token not in text


def test_redact_what_sits_where_keys_go() -> None:
    assert redact("POST /1.0/ABC123/data/users/u1") == "POST /1.0/***/data/users/u1"
    assert redact("GET /sdk/v1/ABC123/installations/i1") == "GET /sdk/v1/***/installations/i1"
    assert redact("headers: {'x-authorization': 'abc123', 'accept': '*/*'}") == (
        "headers: {'x-authorization': '***', 'accept': '*/*'}"
    )
    assert redact("url=https://h/x?api_key=abc123&n=1") == "url=https://h/x?api_key=***&n=1"
