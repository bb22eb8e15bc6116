"""Whether a delivery worker is alive, as PostgreSQL sees it (decision 0032).

Each worker process holds a session advisory lock named after its id, on a connection of its own,
for as long as it may hold batches. When the process dies (kill -9, a crash, the machine), its
socket closes and PostgreSQL ends the session and frees the lock at once; a worker that is alive
keeps it however slow it is. So a lease sweep that finds a batch's owner's lock free knows the
owner is gone, and need not wait for the lease to run out (8 s) to take its batches over.

On SQLite there is one process and no lock: leases alone decide.
"""

from __future__ import annotations

import uuid

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.queue import libpq_url

# pg_advisory_lock's first key for a worker's liveness ("work"); the second is from its id.
_LOCK_CLASS = 0x776F726B
_TRY = text("SELECT pg_try_advisory_xact_lock(:kind, :key)")


def _key(worker_id: str) -> int:
    """31 bits of the worker's random id: two live workers share a key once in ~2 billion pairs,
    and then only the dead one of them looks alive (its batches wait for their lease)."""
    return uuid.UUID(worker_id).int & 0x7FFFFFFF


class LivenessLock:
    """The lock a worker holds while it lives (PostgreSQL only)."""

    def __init__(self, database_url: str, worker_id: str) -> None:
        self._url = libpq_url(database_url)
        self._worker_id = worker_id
        self._connection: psycopg.AsyncConnection[object] | None = None

    @property
    def held(self) -> bool:
        """Taken, its connection not known to be closed."""
        return self._connection is not None and not self._connection.closed

    async def hold(self) -> None:
        """Takes the lock, or checks that it is still held (reconnecting and taking it again
        if PostgreSQL closed its connection)."""
        if self._connection is not None and not self._connection.closed:
            try:
                await self._connection.execute("SELECT 1")
                return
            except psycopg.Error:
                await self.release()
        connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        try:
            # Idle for the life of the process: an idle_session_timeout would end it (and
            # make this worker look dead).
            await connection.execute("SET idle_session_timeout = 0")
            await connection.execute(
                "SELECT pg_advisory_lock(%s, %s)", (_LOCK_CLASS, _key(self._worker_id))
            )
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()


async def gone(session: AsyncSession, owners: list[str]) -> list[str]:
    """Those of these workers whose lock is free: their process has ended. The locks taken to
    find out are held until the session's transaction ends, so that a worker with the same key
    (a new process cannot have the same id) cannot take it meanwhile."""
    dead = []
    for owner in owners:
        try:
            key = _key(owner)
        except ValueError:  # not a worker id of this version: its lease decides
            continue
        if await session.scalar(_TRY, {"kind": _LOCK_CLASS, "key": key}):
            dead.append(owner)
    return dead
