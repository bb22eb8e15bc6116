"""Prometheus metrics: the real `/metrics` endpoint of a real app, scraped after real calls and
a real delivery through the APNs simulator; and two `clarion serve` processes sharing
PROMETHEUS_MULTIPROC_DIR, one answering for both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clarion.app import create_app
from clarion.config import Settings
from clarion.metrics import REASON_CLASSES, reason_class
from clarion.monitoring import multiprocess_dir
from clarion.runtime import Runtime
from tests.conftest import new_app
from tests.support.simulator import free_port
from tests.support.waiting import until
from tests.test_delivery import apns_token, register, transactional, wait_for_send

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def metered(settings: Settings) -> AsyncIterator[tuple[FastAPI, int]]:
    port = free_port()
    app = create_app(settings.model_copy(update={"metrics_port": port}), workers=True)
    async with app.router.lifespan_context(app):
        yield app, port


async def scrape(port: int) -> tuple[str, Samples]:
    # Asynchronous: the server runs on this test's own event loop.
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, parse(response.text)


async def test_calls_sends_and_outcomes_are_counted(
    metered: tuple[FastAPI, int], runtime: Runtime, sim_control: httpx.Client
) -> None:
    app, port = metered
    _, before = await scrape(port)
    ios = await new_app(runtime, sim_control, "ios")
    other_topic = await new_app(runtime, sim_control, "ios", topics=["com.someone.else"])
    dead, flaky, fine = apns_token(), apns_token(), apns_token()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as api:
        await register(api, ios, "m-dead", push_token=dead, custom_id="m-dead")
        await register(api, ios, "m-flaky", push_token=flaky, custom_id="m-flaky")
        await register(api, ios, "m-fine", push_token=fine, custom_id="m-fine")
        await register(api, other_topic, "m-refused", push_token=apns_token(), custom_id="m-x")
        sim_control.post(f"/_sim/apns/tokens/{dead}/uninstall")
        sim_control.post(f"/_sim/apns/tokens/{flaky}/fail", json={"status": 503, "count": 1})
        sent = await transactional(
            api, ios, recipients={"custom_ids": ["m-dead", "m-flaky", "m-fine"]}
        )
        refused = await transactional(api, other_topic, recipients={"custom_ids": ["m-x"]})
        await wait_for_send(api, ios, sent)
        state = await wait_for_send(api, other_topic, refused)
        assert state["failed"] == 1
        # The gauges read the outbox as it is now: nothing of these sends left pending.
        text, after = await scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    send_route = "/1.1/{api_key}/transactional/send"
    assert delta("clarion_http_requests_total", route=send_route, method="POST", status="201") == 2
    installs = "/sdk/v1/{api_key}/installations/{install_id}"
    assert delta("clarion_http_requests_total", route=installs, method="PUT", status="200") == 4
    timed = delta("clarion_http_request_duration_seconds_count", route=send_route, method="POST")
    assert timed == 2
    assert delta("clarion_sends_accepted_total", kind="transactional") == 2
    assert delta("clarion_notifications_total", platform="ios", outcome="sent") == 2
    assert delta("clarion_notifications_total", platform="ios", outcome="token_deleted") == 1
    assert delta("clarion_notifications_total", platform="ios", outcome="error") == 1
    assert delta("clarion_notifications_total", platform="ios", outcome="retried") == 1
    assert delta("clarion_notification_errors_total", platform="ios", reason="credentials") == 1
    # Four answers from APNs: the dead token, the 503, the first delivery, the retried one;
    # and the refused topic's.
    assert delta("clarion_provider_request_duration_seconds_count", platform="ios") == 5
    assert value(after, "clarion_queue_batches", status="pending") == 0
    assert value(after, "clarion_queue_oldest_pending_age_seconds") == 0
    assert ("clarion_campaign_runs", (("state", "delivering"),)) in after
    assert value(after, "clarion_db_pool_size") >= 1
    # No key, token or identifier in any label: only templates and small fixed sets.
    for secret in (ios.api_key, ios.rest_key, dead, flaky, fine, sent, "m-dead"):
        assert secret not in text
    for (name, labels), _ in after.items():
        if name.startswith("clarion_notification_errors"):
            assert dict(labels)["reason"] in REASON_CLASSES


async def test_nothing_is_counted_without_metrics(
    settings: Settings, runtime: Runtime, sim_control: httpx.Client
) -> None:
    # The default: neither CLARION_METRICS_PORT nor PROMETHEUS_MULTIPROC_DIR. Before it, an
    # app that served metrics came and went: its counting stopped with it.
    assert (settings.metrics_port, multiprocess_dir()) == (0, None)
    metered = create_app(settings.model_copy(update={"metrics_port": free_port()}), workers=False)
    async with metered.router.lifespan_context(metered):
        pass
    before = parse(generate_latest(REGISTRY).decode())
    app = create_app(settings, workers=True)
    ios = await new_app(runtime, sim_control, "ios")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://clarion.test") as api:
            await register(api, ios, "quiet", push_token=apns_token(), custom_id="quiet")
            sent = await transactional(api, ios, recipients={"custom_ids": ["quiet"]})
            state = await wait_for_send(api, ios, sent)
            assert state["sent"] == 1
    after = parse(generate_latest(REGISTRY).decode())
    changed = {
        sample: value(after, sample[0], **dict(sample[1]))
        for sample in after.keys() | before.keys()
        if sample[0].startswith("clarion_") and after.get(sample) != before.get(sample)
    }
    assert changed == {}


def test_reasons_fall_in_a_few_classes() -> None:
    assert reason_class("BadDeviceToken") == "token"
    assert reason_class("TransportError: timeout (https://x)") == "transport"
    assert reason_class("HTTP 502") == "provider_unavailable"
    assert reason_class("QUOTA_EXCEEDED") == "rate_limited"
    assert reason_class("something new from a provider") == "other"
    assert reason_class(None) == "other"


async def test_only_metrics_is_served(metered: tuple[FastAPI, int]) -> None:
    _, port = metered
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/")).status_code == 404
        assert (await client.post("/metrics")).status_code == 405


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[tuple[int, int, int]]:
    """Two `clarion serve` (API only) on one SQLite file, sharing a metrics directory; the
    first serves /metrics."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()  # new and empty: what a start script's wipe leaves
    env = {
        **os.environ,
        "CLARION_VAR_DIR": str(tmp_path / "var"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    clarion = [sys.executable, "-m", "clarion.cli"]
    subprocess.run([*clarion, "migrate"], env=env, check=True, capture_output=True)
    api_ports, metrics_port = (free_port(), free_port()), free_port()
    processes = []
    try:
        for index, port in enumerate(api_ports):
            extra = {"CLARION_METRICS_PORT": str(metrics_port)} if index == 0 else {}
            processes.append(
                subprocess.Popen(
                    [*clarion, "serve", "--port", str(port), "--no-workers"],
                    env={**env, **extra},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            until(lambda port=port: _answers(port), what=f"clarion serve on {port}")
        yield api_ports[0], api_ports[1], metrics_port
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/openapi.json").status_code == 200
    except httpx.TransportError:
        return False


async def test_two_processes_are_added_up(two_servers: tuple[int, int, int]) -> None:
    first, second, metrics_port = two_servers
    async with httpx.AsyncClient() as client:
        for port, calls in ((first, 3), (second, 2)):
            for _ in range(calls):
                url = f"http://127.0.0.1:{port}/1.1/somekey/transactional/sends/sometoken"
                assert (await client.get(url)).status_code == 401  # no REST key
    _, samples = await scrape(metrics_port)
    # Answered before routing (the key check): counted under "unmatched", in both processes.
    labels = {"route": "unmatched", "method": "GET", "status": "401"}
    assert value(samples, "clarion_http_requests_total", **labels) == 5
    # Both processes' pools, summed over the live ones.
    assert value(samples, "clarion_db_pool_size") == 2 * Settings().database_pool_size


def test_the_dashboard_shows_every_metric() -> None:
    dashboard = json.loads(Path("deploy/grafana/clarion.json").read_text())
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    families = {
        "clarion_http_requests_total", "clarion_http_request_duration_seconds",
        "clarion_sends_accepted_total", "clarion_notifications_total",
        "clarion_notification_errors_total", "clarion_provider_request_duration_seconds",
        "clarion_queue_batches", "clarion_queue_oldest_pending_age_seconds",
        "clarion_campaign_runs", "clarion_file_runs_total", "clarion_file_run_duration_seconds",
        "clarion_db_pool_connections", "clarion_db_pool_size",
    }  # fmt: skip
    assert {name for name in families if name not in queries} == set()
