"""The delivery worker's log lines name the send they are about (its app, send token and
campaign token), in CLARION_LOG_FORMAT=json's fields, and never a device's token."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator

import httpx
import pytest

from clarion.db import transaction
from clarion.delivery.models import Send
from clarion.delivery.tasks import Deliverer
from clarion.logs import log_handler
from clarion.runtime import Runtime
from tests.delivery.test_leases import (
    Clock,
    batch_of,
    pool,
    slow_provider,
    tokens_of,
    workers,
    write_batch,
)
from tests.support.waiting import eventually

__all__ = ["pool", "workers"]  # fixtures of test_leases, shared


@pytest.fixture
def json_lines(runtime: Runtime) -> Iterator[io.StringIO]:
    """What Clarion's loggers write, as `clarion serve` writes it with CLARION_LOG_FORMAT=json."""
    written = io.StringIO()
    handler = log_handler(runtime.settings.model_copy(update={"log_format": "json"}), written)
    logger = logging.getLogger("clarion")
    logger.addHandler(handler)
    yield written
    logger.removeHandler(handler)


async def test_a_lost_batchs_warning_names_its_send_and_campaign(
    runtime: Runtime,
    sim_control: httpx.Client,
    workers: Callable[..., Deliverer],
    json_lines: io.StringIO,
) -> None:
    clock = Clock()
    batch_id = await write_batch(runtime, sim_control, clock, 4)
    send_id = (await batch_of(runtime, batch_id)).send_id
    async with transaction(runtime.sessions) as session:
        send = await session.get(Send, send_id)
        assert send is not None
        send.campaign_token = "logs-campaign"
        send_token, app_id = send.token, send.app_id
    slow_provider(sim_control, 5000)  # answers after 5 s
    stalled, other = workers(clock), workers(clock)
    # The first worker stalls past its lease; the second takes its batch over, and the first
    # warns, once its answers come, that it records nothing for it.
    delivering = asyncio.create_task(stalled.deliver_batches([batch_id]))

    async def on_the_wire() -> bool:
        return (await batch_of(runtime, batch_id)).progress is not None

    await eventually(on_the_wire, what="on the wire")
    clock.advance(runtime.settings.delivery_lease_seconds + 1)
    await other.deliver_batches([batch_id])
    await delivering

    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    lost = [line for line in lines if "no longer held" in line["message"]]
    assert len(lost) == 1, lines
    assert lost[0]["level"] == "WARNING"
    assert (lost[0]["app_id"], lost[0]["send_token"]) == (app_id, send_token)
    assert (lost[0]["campaign_token"], lost[0]["batch_id"]) == ("logs-campaign", batch_id)
    for token in await tokens_of(runtime, batch_id):
        assert token not in json_lines.getvalue()
