"""Property-based fuzzing of the published OpenAPI document against a real `clarion serve`.

Schemathesis reads /openapi.json, generates requests for every operation (boundary values
first, then random ones, then chains of calls) and fails on any 5xx and on any answer the
document does not declare: status, body schema, content type, Allow header, auth not
enforced. One run per database backend and per app key (Live, Dev). See docs/api-contract.md.

Deterministic: Hypothesis runs derandomized (schemathesis' deterministic mode: the same cases
every run), one worker, no example database or crash cache, no response-time check. The
server runs without workers, so nothing it is asked to fetch (import sources, export
destinations, GDPR callbacks) is ever fetched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import empty_database
from tests.support.simulator import REPO_ROOT, free_port, stop_process_group

pytestmark = pytest.mark.fuzz

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
# 62 operations x (~50 boundary cases + 10 random examples) + ~20 call chains: ~4,000 requests,
# ~40 s a run on this 2-core machine; the Dev key's run skips the boundary cases and takes 4
# random examples (~10 s). Three runs and two server starts: about two minutes.
MAX_EXAMPLES = 10
LIGHT_MAX_EXAMPLES = 4
STATEFUL_MAX_STEPS = 6
RUN_TIMEOUT = 240


@dataclass(frozen=True)
class Served:
    base_url: str
    rest_key: str
    live_key: str
    dev_key: str
    other_app_id: int  # the admin routes' target: rotating its keys must not lock the fuzzer out
    names: list[str]
    tokens: list[str]
    request_ids: list[str]
    install_ids: list[str]
    custom_ids: list[str]


def _clarion(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "clarion"), *args], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/openapi.json", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    backend: str = request.param
    var_dir = tmp_path_factory.mktemp(f"fuzz-{backend}")
    with empty_database(backend, var_dir) as database_url:
        env = {
            **os.environ,
            "CLARION_VAR_DIR": str(var_dir),
            "CLARION_DATABASE_URL": database_url,
        }
        _clarion(env, "migrate")
        app = json.loads(_clarion(env, "apps", "create", "--name", "fuzz", "--platform", "web"))
        other = json.loads(_clarion(env, "apps", "create", "--name", "other", "--platform", "ios"))
        port = free_port()
        command = [str(BIN / "clarion"), "serve", "--port", str(port), "--no-workers"]
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + START_TIMEOUT
                while not _ready(url):
                    if process.poll() is not None or time.monotonic() > deadline:
                        output.seek(0)
                        log = output.read().decode("utf-8", "replace")[-4000:]
                        raise RuntimeError(f"clarion serve did not start:\n{log}")
                    time.sleep(0.1)  # polling for readiness, not synchronising with a result
                yield _seed(url, app, other["id"], var_dir)
            finally:
                stop_process_group(process)


def _seed(url: str, app: dict[str, Any], other_app_id: int, var_dir: Path) -> Served:
    """One object of each kind, so that the routes that look one up reach their logic (and
    their success schema) rather than only answering 404."""
    key = app["api_key"]
    with httpx.Client(
        base_url=url, headers={"X-Authorization": app["rest_api_key"]}, timeout=10.0
    ) as api:

        def made(method: str, path: str, body: Any, status: int) -> dict[str, Any]:
            response = api.request(method, path, json=body)
            assert response.status_code == status, (path, response.text)
            found: dict[str, Any] = response.json()
            return found

        made("PUT", f"/1.0/{key}/custom-audience/fuzz", {"type": "custom_ids", "ids": ["u1"]}, 202)
        # Local folders: nothing leaves the machine even if a worker ran.
        files = f"file://{var_dir}"
        source = {
            "name": "fuzz",
            "url": f"{files}/imports/{app['id']}",
            "id_type": "custom_ids",
            "audience_name": "fuzz",
        }
        made("POST", f"/1.0/{key}/imports", source, 201)
        destination = {"name": "fuzz", "kind": "optin_users", "url": f"{files}/exports/{app['id']}"}
        made("POST", f"/1.0/{key}/exports/destinations", destination, 201)
        campaign = made(
            "POST",
            f"/1.1/{key}/campaigns/create",
            {
                "name": "fuzz",
                "live": False,
                "push_time": "2030-01-01T10:00:00",
                "messages": [{"language": "en", "body": "Hello"}],
            },
            201,
        )
        send = made(
            "POST",
            f"/1.1/{key}/transactional/send",
            {
                "group_id": "fuzz",
                "recipients": {"custom_ids": ["u1"]},
                "message": {"title": "Hi", "body": "Hello"},
            },
            201,
        )
        gdpr = made(
            "POST",
            f"/1.0/{key}/gdpr/request",
            {"request_type": "review", "id": {"type": "custom_id", "value": "u1"}},
            201,
        )
        export = made(
            "POST",
            f"/1.0/{key}/export/campaign/{campaign['campaign_token']}/ids",
            {"from": "2026-11-01", "to": "now", "events": ["push_sent"]},
            201,
        )
        response = httpx.put(
            f"{url}/sdk/v1/{key}/installations/fuzz-install",
            json={"custom_id": "u1"},
            timeout=10.0,
        )
        assert response.status_code == 200, response.text
    return Served(
        base_url=url,
        rest_key=app["rest_api_key"],
        live_key=key,
        dev_key=app["dev_api_key"],
        other_app_id=other_app_id,
        names=["fuzz"],
        tokens=[campaign["campaign_token"], send["token"]],
        request_ids=[gdpr["request_id"], export["id"]],
        install_ids=["fuzz-install"],
        custom_ids=["u1"],
    )


def _toml(value: Any) -> str:
    # TOML's basic strings, arrays and integers are written as JSON writes them.
    return json.dumps(value)


def _config(served: Served, api_key: str, *, light: bool) -> str:
    dictionaries = {
        "name": served.names,
        "token": served.tokens,
        "request_id": served.request_ids,
        "install_id": served.install_ids,
        "custom_id": served.custom_ids,
    }
    lines = [
        "workers = 1",  # one request at a time: the server's state evolves in one order
        # No state between runs: schemathesis would otherwise replay the crashes it saved.
        "cache.enabled = false",
        "[generation]",
        "deterministic = true",
        f"max-examples = {LIGHT_MAX_EXAMPLES if light else MAX_EXAMPLES}",
        'database = "none"',
        # Random integers rarely pass 64 bits, where the database's integers end: a quarter of
        # the integer parameters (query and path) take one of these.
        'dictionaries.integer = { dictionary = "beyond-64-bits", probability = 0.25 }',
        "[phases.coverage]",
        f"enabled = {_toml(not light)}",
        "[phases.stateful]",
        f"max-steps = {STATEFUL_MAX_STEPS}",
        "[checks]",
        # Out of scope: they ask the server to accept every value the schema allows, or refuse
        # every one it does not, which pydantic's validators (rules across fields) exceed.
        "positive_data_acceptance.enabled = false",
        "negative_data_rejection.enabled = false",
        # Archives and export files appear once a worker made them; the fuzzed server has none.
        "ensure_resource_availability.enabled = false",
        "[auth.openapi.RestApiKey]",
        f"api_key = {_toml(served.rest_key)}",
        "[parameters]",
        f'"path.api_key" = {_toml(api_key)}',
        f'"path.app_id" = {served.other_app_id}',
    ]
    for name in dictionaries:
        # Half the values come from the seeded objects, half are generated.
        lines.append(f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}')
    dictionaries["beyond-64-bits"] = [str(2**63), str(10**20), str(-(2**63) - 1)]
    for name, values in dictionaries.items():
        lines.append(f'[dictionaries."{name}"]')
        lines.append(f"values = {_toml(values)}")
    lines += [
        # Batch's URLs overlap: GET /campaigns/{token} also matches /campaigns/create and
        # /campaigns/estimate (and the in-app-campaigns ones alike), so their 405 rightly allows
        # GET, which their paths do not list.
        "[[operations]]",
        'include-path-regex = "/(in-app-)?campaigns/(create|estimate)$"',
        "checks.allow_header_conformance.enabled = false",
    ]
    return "\n".join(lines) + "\n"


# The Live key on both databases; the Dev key (which mostly meets 403s) on SQLite, lighter.
@pytest.mark.parametrize(
    ("served", "key"),
    [("sqlite", "live"), ("sqlite", "dev"), ("postgres", "live")],
    indirect=["served"],
)
def test_every_answer_is_in_the_document(served: Served, key: str, tmp_path: Path) -> None:
    api_key = served.live_key if key == "live" else served.dev_key
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(served, api_key, light=key == "dev"))
    done = subprocess.run(
        [
            str(BIN / "st"),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{served.base_url}/openapi.json",
        ],
        cwd=tmp_path,  # whatever schemathesis writes stays out of the repository
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    sys.stdout.write(output)  # the whole report (phases, timings, warnings), shown on failure
    if done.returncode != 0:
        # The failures and the summary: what failed, how to reproduce it (curl).
        start = output.find("=== FAILURES ===")
        pytest.fail(output[max(0, start - 40) :] if start >= 0 else output, pytrace=False)
