"""The transactional intake's group commit: calls served together share one transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from clarion.apps.service import AppAccess
from clarion.config import QueueBackend
from clarion.db import create_engine, create_sessionmaker
from clarion.delivery.models import DeliveryBatch, Send
from clarion.queue import JobQueue
from clarion.runtime import Runtime
from clarion.transactional.schemas import TransactionalSend
from clarion.transactional.service import SendIntake
from tests.conftest import ClientApp


def _body(user: str) -> TransactionalSend:
    return TransactionalSend.model_validate(
        {"group_id": "g", "recipients": {"custom_ids": [user]}, "message": {"body": "hi"}}
    )


def _access(app_id: int) -> AppAccess:
    return AppAccess(
        app_id=app_id, company_id=1, platform="ios", vapid_public_key=None, is_dev=False
    )


async def test_calls_served_together_are_stored_in_one_group(
    runtime: Runtime, ios_app: ClientApp
) -> None:
    tokens = await asyncio.gather(
        *(
            runtime.send_intake.submit(access=_access(ios_app.app_id), body=_body(f"u{n}"))
            for n in range(30)
        )
    )

    assert len(set(tokens)) == 30
    async with runtime.sessions() as session:
        stored = await session.scalar(
            select(func.count()).select_from(Send).where(Send.token.in_(tokens))
        )
        batches = await session.scalar(
            select(func.count())
            .select_from(DeliveryBatch)
            .join(Send, Send.id == DeliveryBatch.send_id)
            .where(Send.token.in_(tokens))
        )
    assert (stored, batches) == (30, 30)


async def test_a_failed_group_fails_every_call_in_it(tmp_path: Path) -> None:
    # A database without Clarion's tables: the group's transaction cannot commit.
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    intake = SendIntake(
        create_sessionmaker(engine),
        JobQueue(QueueBackend.MEMORY, "sqlite://"),
        batch_size=1000,
    )
    try:
        results = await asyncio.gather(
            *(intake.submit(access=_access(1), body=_body(f"u{n}")) for n in range(5)),
            return_exceptions=True,
        )
        assert len(results) == 5
        assert all(isinstance(result, OperationalError) for result in results), results
        with pytest.raises(OperationalError):  # and the next call forms a group of its own
            await intake.submit(access=_access(1), body=_body("later"))
    finally:
        await engine.dispose()
