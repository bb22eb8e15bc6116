"""API rate limits: token buckets per key, in this process or shared through PostgreSQL.

Each limit is a token bucket of `rate` calls per second holding one second of calls (at least
one): a client may burst a second's worth, then goes at the rate. A refused call is answered
Batch's `429 {"code": 60}` with `Retry-After` in whole seconds (at least 1), by clarion.http.

- Server APIs (REST key + app key): one bucket per app key (Live and Dev apart) and one per
  company (a company has one REST key). Embedded on SQLite they live in this process
  (`LocalBuckets`, ~2 us a bucket, no database); scaled out, in PostgreSQL (`SharedBuckets`),
  so that N API processes share one budget. Each process takes tokens from the shared bucket
  50 ms of calls at a time (100 at the default 2,000/s) and spends them locally for up to a
  second: a key at its limit costs ~20 round trips (0.7 ms each) a second per process, not one
  per call, and a refusal is remembered until the bucket refills, so a client hammering past
  its limit costs none.
- SDK API: per installation and per client address, in each process (`LocalBuckets`) in every
  mode: the SDK's fast paths answer in ~40 us, a database round trip per call would cost more
  than the call. With N processes behind a balancer, a device gets up to N times its limit.
- PostgreSQL unreachable: a server API call that needs a round trip is answered Batch's
  `503 {"code": 2}` with `Retry-After` (UNREACHABLE_RETRY_SECONDS), not a 500, and the process
  tries the database again for such calls at most once a second (decision 0040).

Why our own buckets rather than the `limits` library, and PostgreSQL rather than Redis:
docs/decisions/0040-rate-limits.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import Float, Integer, String, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.config import RateLimitStore, Settings
from clarion.db import Base
from clarion.errors import MaintenanceError, TooManyRequestsError

log = logging.getLogger(__name__)

# A process takes this many seconds of a shared bucket's rate per round trip (at least one
# token, at most the burst): 100 calls at 2,000/s.
CHUNK_SECONDS = 0.05
# Tokens taken from a shared bucket and not spent within this long are dropped, so that no
# process can spend a budget it took long ago on top of today's.
LEASE_SECONDS = 1.0
# PostgreSQL unreachable: the Retry-After of the 503 (a restart or a failover takes seconds;
# Batch advises clients to wait at least 5 s on a 429 too), and how long a process answers
# such calls without trying the database again, so that an outage does not turn every call
# into a connection attempt.
UNREACHABLE_RETRY_SECONDS = 5
UNREACHABLE_RECHECK_SECONDS = 1.0


class RateLimitBucket(Base):
    """A shared token bucket (PostgreSQL only; UNLOGGED there: a crash refills the buckets,
    which costs nothing but a second of burst, and spares the WAL a write per round trip)."""

    __tablename__ = "rate_limit_buckets"

    # "app:<id>:live", "app:<id>:dev", "company:<id>": ids, never keys.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    # Seconds since the epoch of the last refill, from the taking process's clock.
    refilled_at: Mapped[float] = mapped_column(Float)
    # What the last round trip took (read back by RETURNING).
    granted: Mapped[int] = mapped_column(Integer)


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float  # tokens per second
    burst: float  # the bucket's size
    what: str  # for the 429's message: "this API key", "this installation"…

    @classmethod
    def per_second(cls, rate: float, what: str) -> Limit | None:
        """None for 0: the limit is off."""
        return cls(rate, max(1.0, rate), what) if rate > 0 else None


class RateLimited(TooManyRequestsError):
    """Batch's 429/60, with the seconds the client should wait (`Retry-After`)."""

    def __init__(self, limit: Limit, wait: float) -> None:
        self.retry_after = max(1, math.ceil(wait))
        super().__init__(
            f"more than {limit.rate:g} calls per second for {limit.what}: "
            f"retry after {self.retry_after} s"
        )


class RateLimitStoreUnreachable(MaintenanceError):
    """Batch's 503/2: the shared buckets' database did not answer; the call may be retried."""

    def __init__(self) -> None:
        self.retry_after = UNREACHABLE_RETRY_SECONDS
        super().__init__(f"the service cannot reach its database: retry after {self.retry_after} s")


class LocalBuckets:
    """Token buckets in this process's memory, least recently used first.

    A bucket untouched until it is full again is the same as no bucket, so those at the front
    are dropped as calls go: memory follows the keys active in the last second or so (an
    installation's bucket refills in a second), not every installation ever seen."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock.monotonic
        # key -> (tokens, time of the last refill, time the bucket is full again)
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, limit: Limit) -> float:
        """One token: 0.0 when taken, else the seconds until there is one."""
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            tokens = limit.burst
        else:
            tokens = min(limit.burst, bucket[0] + (now - bucket[1]) * limit.rate)
            buckets.move_to_end(key)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / limit.rate
        if not wait:
            tokens -= 1
        buckets[key] = (tokens, now, now + (limit.burst - tokens) / limit.rate)
        while buckets:
            oldest = next(iter(buckets.values()))
            if oldest[2] > now:
                break
            buckets.popitem(last=False)
        return wait

    def give_back(self, key: str, limit: Limit) -> None:
        """Return a token taken for a call that another bucket then refused."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            tokens = min(limit.burst, bucket[0] + 1)
            full_at = bucket[1] + (limit.burst - tokens) / limit.rate
            self._buckets[key] = (tokens, bucket[1], full_at)


# The bucket's tokens now: refilled since it was last written, never past the burst. A clock
# behind the one that last wrote (another machine's) refills nothing rather than taking tokens.
_AVAILABLE = "least(:burst, b.tokens + greatest(0, :now - b.refilled_at) * :rate)"
_TAKE = text(
    f"""
    INSERT INTO rate_limit_buckets AS b (key, tokens, refilled_at, granted)
    VALUES (:key, :burst - :first, :now, :first)
    ON CONFLICT (key) DO UPDATE SET
        tokens = {_AVAILABLE} - least(:want, floor({_AVAILABLE})),
        granted = least(:want, floor({_AVAILABLE})),
        refilled_at = greatest(b.refilled_at, :now)
    RETURNING tokens, granted
    """
)


class _Lease:
    __slots__ = ("expires", "refused_until", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.refused_until = 0.0


class SharedBuckets:
    """Token buckets in PostgreSQL, shared by every process of the database; each process
    takes tokens a chunk at a time (one UPSERT) and spends them locally (see the module)."""

    def __init__(self, engine: AsyncEngine, clock: Clock = SYSTEM_CLOCK) -> None:
        self._engine = engine
        # Leases and remembered refusals are this process's: monotonic time. The buckets are
        # refilled by the wall clock, which the processes of several machines share.
        self._clock = clock.monotonic
        self._wall = clock
        self._leases: dict[str, _Lease] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.round_trips = 0
        self._unreachable_until: float | None = None  # after a failed round trip

    async def take(self, key: str, limit: Limit) -> float:
        lease = self._leases.get(key)
        if lease is not None and lease.tokens and lease.expires > self._clock():
            lease.tokens -= 1  # the hot path: no await, no round trip
            return 0.0
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:  # one round trip at a time per key; the calls behind it use its chunk
            lease = self._leases.get(key)
            if lease is None:
                lease = self._leases[key] = _Lease()
            now = self._clock()
            if lease.tokens and lease.expires > now:
                lease.tokens -= 1
                return 0.0
            if lease.refused_until > now:
                return lease.refused_until - now
            if self._unreachable_until is not None and self._unreachable_until > now:
                raise RateLimitStoreUnreachable
            want = max(1, min(math.floor(limit.burst), math.floor(limit.rate * CHUNK_SECONDS)))
            try:
                async with self._engine.begin() as connection:
                    row = (
                        await connection.execute(
                            _TAKE,
                            {
                                "key": key,
                                "now": self._wall().timestamp(),
                                "rate": limit.rate,
                                "burst": limit.burst,
                                "want": want,
                                "first": min(want, math.floor(limit.burst)),
                            },
                        )
                    ).one()
            except (OperationalError, InterfaceError) as exc:
                # Refused, reset, terminated (a restart, a failover): the call fails cleanly
                # rather than as a 500; failing open would gain nothing, every server API
                # route needs the same database next (decision 0040).
                if self._unreachable_until is None:
                    log.warning("rate limits: PostgreSQL unreachable, answering 503: %s", exc.orig)
                self._unreachable_until = self._clock() + UNREACHABLE_RECHECK_SECONDS
                raise RateLimitStoreUnreachable from exc
            if self._unreachable_until is not None:
                log.info("rate limits: PostgreSQL reachable again")
                self._unreachable_until = None
            self.round_trips += 1
            tokens, granted = float(row[0]), int(row[1])
            if granted == 0:
                lease.tokens = 0
                lease.refused_until = now + (1 - tokens) / limit.rate
                return lease.refused_until - now
            lease.tokens = granted - 1
            lease.expires = now + LEASE_SECONDS
            return 0.0

    def give_back(self, key: str) -> None:
        lease = self._leases.get(key)
        if lease is not None:
            lease.tokens += 1


class RateLimits:
    """What the API asks before serving a call; raises RateLimited when a bucket is empty."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine | None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.app_key = Limit.per_second(settings.api_rate_limit, "this API key")
        self.company = Limit.per_second(settings.api_company_rate_limit, "this company")
        self.install = Limit.per_second(settings.sdk_install_rate_limit, "this installation")
        self.address = Limit.per_second(settings.sdk_address_rate_limit, "this address")
        self.local = LocalBuckets(clock)
        self.shared: SharedBuckets | None = None
        if settings.resolved_rate_limit_store is RateLimitStore.POSTGRES:
            if engine is None:
                raise ValueError("the shared rate limit store needs the database's engine")
            self.shared = SharedBuckets(engine, clock)

    async def api_call(self, *, app_id: int, is_dev: bool, company_id: int) -> None:
        """A call of the server APIs with an app key (and the company's REST key)."""
        app_key, company = self.app_key, self.company
        if app_key is None and company is None:
            return
        key = f"app:{app_id}:{'dev' if is_dev else 'live'}"
        company_key = f"company:{company_id}"
        shared = self.shared
        if shared is None:
            local = self.local
            if app_key is not None and (wait := local.take(key, app_key)):
                raise RateLimited(app_key, wait)
            if company is not None and (wait := local.take(company_key, company)):
                if app_key is not None:
                    local.give_back(key, app_key)
                raise RateLimited(company, wait)
            return
        if app_key is not None and (wait := await shared.take(key, app_key)):
            raise RateLimited(app_key, wait)
        if company is not None and (wait := await shared.take(company_key, company)):
            if app_key is not None:
                shared.give_back(key)
            raise RateLimited(company, wait)

    def sdk_call(self, *, api_key: str, install_id: str | None, address: str | None) -> None:
        """A call of the SDK API: per installation (of the key's app) and per client address."""
        local = self.local
        install = self.install if install_id is not None else None
        install_key = f"i:{api_key}:{install_id}"
        if install is not None and (wait := local.take(install_key, install)):
            raise RateLimited(install, wait)
        at_address = self.address if address is not None else None
        if at_address is not None and (wait := local.take(f"a:{address}", at_address)):
            if install is not None:
                local.give_back(install_key, install)
            raise RateLimited(at_address, wait)
