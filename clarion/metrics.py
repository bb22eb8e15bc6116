"""Prometheus metrics: what the process counts as it works (docs/decisions/0043-metrics.md).

Plumbing: the metric objects, the classes of provider reasons, and the cheap ways the hot
paths add to them. Serving them (`/metrics` on CLARION_METRICS_PORT) and the gauges read from
the database are in clarion.monitoring, above the domains.

Every label takes values from a small fixed set: route templates (never a raw path, which
carries app keys and tokens), status codes, platforms, outcome and reason *classes* (a
provider's reason is verbatim text, sometimes with an exception message in it). A label value
never seen before is a new time series in every process for ever.

With PROMETHEUS_MULTIPROC_DIR set in the environment (several processes on one machine),
prometheus_client keeps every value in a file of that directory per process, and the process
serving `/metrics` adds them up; without it, the values live in this process's memory.

Nothing is counted unless the process's counts go somewhere (`start_counting`, called by
clarion.monitoring.start_metrics): with CLARION_METRICS_PORT unset and no
PROMETHEUS_MULTIPROC_DIR, the default, every function below returns at once.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from functools import partial
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import event
from sqlalchemy.orm import Session

HTTP_REQUESTS = Counter(
    "clarion_http_requests",
    "API calls answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "clarion_http_request_duration_seconds",
    "Time from a call's arrival to the end of its answer, by route template and method.",
    ["route", "method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SENDS_ACCEPTED = Counter(
    "clarion_sends_accepted",
    "Sends committed to the outbox: transactional calls, campaign versions, automation sends.",
    ["kind"],
)
NOTIFICATIONS = Counter(
    "clarion_notifications",
    "Notifications by platform and outcome: sent, error, token_deleted (outcomes logged), "
    "retried (a transient provider answer, sent again later), resent (of sent, those sent "
    "again after an unknown outcome: they may have reached the device twice).",
    ["platform", "outcome"],
)
NOTIFICATION_ERRORS = Counter(
    "clarion_notification_errors",
    "Notifications logged as push_error, by platform and class of the provider's reason.",
    ["platform", "reason"],
)
PROVIDER_SECONDS = Histogram(
    "clarion_provider_request_duration_seconds",
    "Time from a push being written on an HTTP/2 stream to the provider's answer.",
    ["platform"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# A delivery worker killed between a provider's answer and the commit of its outcome sends that
# push again (decision 0032): this window, and what it is made of.
DELIVERY_UNRECORDED_SECONDS = Histogram(
    "clarion_delivery_unrecorded_seconds",
    "Time from a provider's answer to the commit of its outcome (a notification's progress "
    "recorded): a worker killed meanwhile sends it again.",
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5),
)
DELIVERY_RECORDING_SECONDS = Histogram(
    "clarion_delivery_recording_seconds",
    "A delivery worker's recording of outcomes, by part: write (the statements), commit.",
    ["part"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0),
)
FILE_RUNS = Counter(
    "clarion_file_runs",
    "Flat-file imports and daily exports finished, by kind (import, export) and outcome.",
    ["kind", "outcome"],
)
FILE_RUN_SECONDS = Histogram(
    "clarion_file_run_duration_seconds",
    "How long an import or export run took, by kind.",
    ["kind"],
    buckets=(0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0),
)
# Summed over the live processes sharing PROMETHEUS_MULTIPROC_DIR ("livesum": a process that
# stopped no longer counts).
DB_CONNECTIONS = Gauge(
    "clarion_db_pool_connections",
    "Database connections of the pools by state: in_use (checked out), open.",
    ["state"],
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "clarion_db_pool_size",
    "Connections the pools keep (CLARION_DATABASE_POOL_SIZE per process).",
    multiprocess_mode="livesum",
)

# -- the switch ----------------------------------------------------------------------------

# How many holders in this process want counting (clarion.monitoring.start_metrics, once per
# app or worker it starts; tests start several apps in one process). Counting costs the hot
# paths little (2-5 µs an API call for RequestMetrics, ~0.6 µs a notification for its outcome
# and provider latency, against ~700 µs and ~70 µs of CPU each), but for nothing when no one
# reads the numbers.
_counting = 0


def start_counting() -> None:
    global _counting
    _counting += 1


def stop_counting() -> None:
    global _counting
    _counting = max(0, _counting - 1)


def is_counting() -> bool:
    return _counting > 0


# -- reasons ------------------------------------------------------------------------------

# The classes an error reason falls in. Exact reasons first (APNs `reason`, FCM `errorCode`
# and `status`, Clarion's own), then the word before a ':' (Clarion's "Kind: detail" reasons),
# then the HTTP status a bare "HTTP 4xx" names.
REASON_CLASSES = (
    "token",
    "payload",
    "credentials",
    "rate_limited",
    "provider_unavailable",
    "transport",
    "expired",
    "refused",
    "internal",
    "other",
)
_REASONS = {
    # The device or subscription is gone or not this app's.
    "BadDeviceToken": "token",
    "DeviceTokenNotForTopic": "token",
    "Unregistered": "token",
    "UNREGISTERED": "token",
    "UnknownSubscription": "token",
    "InvalidEndpoint": "token",
    "InvalidSubscriptionKeys": "token",
    "SENDER_ID_MISMATCH": "token",
    # The message itself.
    "PayloadTooLarge": "payload",
    "PayloadEmpty": "payload",
    "InvalidPayload": "payload",
    "INVALID_ARGUMENT": "payload",
    "BadCollapseId": "payload",
    "BadExpirationDate": "payload",
    "BadPriority": "payload",
    "BadMessageId": "payload",
    "TemplateLimit": "payload",
    # The app's provider settings.
    "InvalidProviderToken": "credentials",
    "ExpiredProviderToken": "credentials",
    "MissingProviderToken": "credentials",
    "BadTopic": "credentials",
    "TopicDisallowed": "credentials",
    "BadCertificate": "credentials",
    "BadCertificateEnvironment": "credentials",
    "InvalidCredentials": "credentials",
    "THIRD_PARTY_AUTH_ERROR": "credentials",
    "PERMISSION_DENIED": "credentials",
    "UNAUTHENTICATED": "credentials",
    "NoCredentials": "credentials",
    "invalid token response": "credentials",
    # The provider pushing back or failing.
    "TooManyRequests": "rate_limited",
    "TooManyProviderTokenUpdates": "rate_limited",
    "QUOTA_EXCEEDED": "rate_limited",
    "RESOURCE_EXHAUSTED": "rate_limited",
    "InternalServerError": "provider_unavailable",
    "ServiceUnavailable": "provider_unavailable",
    "Shutdown": "provider_unavailable",
    "UNAVAILABLE": "provider_unavailable",
    "INTERNAL": "provider_unavailable",
    "TransportError": "transport",
    "Expired": "expired",
    "OutboundPolicy": "refused",
    "InternalError": "internal",
}
_STATUS_CLASSES = {"400": "payload", "401": "credentials", "403": "credentials", "404": "token"}
_STATUS_CLASSES |= {"410": "token", "413": "payload", "429": "rate_limited"}
_known: dict[str, str] = {}


def reason_class(reason: str | None) -> str:
    """One of REASON_CLASSES for a provider's or Clarion's reason, verbatim."""
    if not reason:
        return "other"
    found = _known.get(reason)
    if found is not None:
        return found
    head = reason.split(":", 1)[0].strip()
    found = _REASONS.get(reason) or _REASONS.get(head)
    if found is None:
        if head.startswith("HTTP "):
            code = head[5:].strip()
            found = _STATUS_CLASSES.get(code, "provider_unavailable" if code[:1] == "5" else None)
        found = found or "other"
    # Reasons with an exception's text are endless: remember only the first few thousand.
    if len(_known) < 4096:
        _known[reason] = found
    return found


# -- counting on commit --------------------------------------------------------------------

_PENDING = "clarion.metrics"  # Session.info key: increments waiting for the commit


def count_on_commit(session: Any, counts: Iterable[tuple[Counter, int]]) -> None:
    """Adds to counters once the session's transaction commits, never for one rolled back (a
    job that fails after recording its outcomes records them again when it is retried).
    `session`: an AsyncSession or a Session."""
    if not _counting:
        return
    info: MutableMapping[str, Any] = session.info
    pending: list[tuple[Counter, int]] | None = info.get(_PENDING)
    if pending is None:
        info[_PENDING] = pending = []
    pending.extend(counts)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        for counter, amount in pending:
            counter.inc(amount)


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


def count_notifications(
    session: Any, outcomes: Iterable[tuple[str, str, str | None, bool]]
) -> None:
    """Counts push events as they are logged, one (platform, kind, reason, resent) each; a
    lazy iterator (record_push_events' `map`) is not even read when nothing is counted."""
    if not _counting:
        return
    counts: Tally[Counter] = Tally()
    for (platform, kind, reason, resent), amount in Tally(outcomes).items():
        if kind == "push_sent":
            counts[NOTIFICATIONS.labels(platform, "sent")] += amount
            if resent:
                counts[NOTIFICATIONS.labels(platform, "resent")] += amount
        elif kind == "push_error":
            counts[NOTIFICATIONS.labels(platform, "error")] += amount
            counts[NOTIFICATION_ERRORS.labels(platform, reason_class(reason))] += amount
        elif kind == "token_deleted":
            counts[NOTIFICATIONS.labels(platform, "token_deleted")] += amount
    count_on_commit(session, counts.items())


_SENDS_BY_KIND: dict[str, Any] = {}  # `labels()` takes a lock and builds a key: once per kind


def count_sends(session: Any, kind: str, amount: int) -> None:
    if amount and _counting:
        counter = _SENDS_BY_KIND.get(kind)
        if counter is None:
            counter = _SENDS_BY_KIND[kind] = SENDS_ACCEPTED.labels(kind)
        count_on_commit(session, [(counter, amount)])


# -- providers ------------------------------------------------------------------------------


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """Observes many values at once: each bucket and the sum are added to once, not once per
    value. `Histogram.observe` writes two values under a lock (a file of mapped memory in
    multiprocess mode) per notification; a worker sends a few thousand a second. The loops
    are map and Counter's, in C: 0.2 µs a value, against 1 µs written out in Python."""
    if not values:
        return
    tally = Tally(map(partial(bisect_left, histogram._upper_bounds), values))
    _add_to_buckets(histogram, tally, sum(values))


def observe_counted(histogram: Histogram, counted: Iterable[tuple[float, int]]) -> None:
    """observe_many of (value, how many times it was seen)."""
    bounds: list[float] = histogram._upper_bounds
    tally: Tally[int] = Tally()
    total = 0.0
    for value, times in counted:
        tally[bisect_left(bounds, value)] += times
        total += value * times
    if tally:
        _add_to_buckets(histogram, tally, total)


def _add_to_buckets(histogram: Histogram, tally: Tally[int], total: float) -> None:
    buckets = histogram._buckets
    for index, amount in tally.items():
        buckets[index].inc(amount)
    histogram._sum.inc(total)


def note_provider_results(platform: str, elapsed: Sequence[float], retried: int) -> None:
    """After a provider's batch: the answers' latencies, and how many it asked to retry."""
    if not _counting:
        return
    observe_many(PROVIDER_SECONDS.labels(platform), elapsed)
    if retried:
        NOTIFICATIONS.labels(platform, "retried").inc(retried)


def note_recording(unrecorded: Iterable[tuple[float, int]], write: float, commit: float) -> None:
    """After a delivery worker recorded outcomes: (seconds from their answer to the commit, how
    many outcomes), and how long the statements and the commit took."""
    if not _counting:
        return
    observe_counted(DELIVERY_UNRECORDED_SECONDS, unrecorded)
    DELIVERY_RECORDING_SECONDS.labels("write").observe(write)
    DELIVERY_RECORDING_SECONDS.labels("commit").observe(commit)


# -- imports and exports ------------------------------------------------------------------


def note_file_run(kind: str, outcome: str, seconds: float) -> None:
    if not _counting:
        return
    FILE_RUNS.labels(kind, outcome).inc()
    FILE_RUN_SECONDS.labels(kind).observe(seconds)


# -- the database pool ----------------------------------------------------------------------


def watch_pool(pool: Any, size: int) -> Callable[[], None]:
    """Follows a SQLAlchemy pool's connections in the gauges; returns what stops it."""
    in_use, opened = DB_CONNECTIONS.labels("in_use"), DB_CONNECTIONS.labels("open")

    def checkout(*_: Any) -> None:
        in_use.inc()

    def checkin(*_: Any) -> None:
        in_use.dec()

    def connect(*_: Any) -> None:
        opened.inc()

    def close(*_: Any) -> None:
        opened.dec()

    hooks = {"checkout": checkout, "checkin": checkin, "connect": connect, "close": close}
    for name, hook in hooks.items():
        event.listen(pool, name, hook)
    DB_POOL_SIZE.inc(size)

    def stop() -> None:
        for name, hook in hooks.items():
            event.remove(pool, name, hook)
        DB_POOL_SIZE.dec(size)

    return stop


# -- the API --------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """ASGI middleware: counts every call by route template and status, and times it.

    The template is the route FastAPI matched (`scope["route"]`, set during routing on the
    scope this middleware passed down); a call answered before routing (the SDK's fast paths,
    a body too large) or matching no route is counted under "unmatched". Children of the
    metrics are kept per label set: `labels()` costs a lock and a tuple per call."""

    def __init__(self, app: Asgi) -> None:
        self.app = app
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app fails before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template: str = getattr(route, "path", None) or "unmatched"
            method: str = scope["method"]
            if method not in _METHODS:
                method = "other"  # a client may send any word
            key = (template, method, status)
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = HTTP_REQUESTS.labels(template, method, status)
            counter.inc()
            timer = self._timers.get(key[:2])
            if timer is None:
                timer = self._timers[key[:2]] = HTTP_SECONDS.labels(template, method)
            timer.observe(time.perf_counter() - started)
