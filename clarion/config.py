"""Clarion's settings: one pydantic-settings class read from CLARION_* environment variables.

Read once at the edges (app factory, worker start, CLI) and passed down; see docs/architecture.md.
"""

from __future__ import annotations

import json
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class QueueBackend(StrEnum):
    # In-process pgqueuer adapter: the embedded default, one process, no extra server.
    MEMORY = "memory"
    # pgqueuer on PostgreSQL: several `clarion serve` / `clarion worker` processes share it.
    POSTGRES = "postgres"


class RateLimitStore(StrEnum):
    MEMORY = "memory"
    POSTGRES = "postgres"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLARION_", extra="forbid")

    var_dir: Path = Path("var")
    database_url: str = ""
    # PostgreSQL connections each process keeps open. Below the sessions a busy process holds
    # at once (worker_concurrency jobs, the scheduler, API calls), SQLAlchemy opens extra ones
    # and closes them on return: a fan-out then started ~180 PostgreSQL backends instead of ~30,
    # each a fork and a cold catalog cache on the database's core.
    database_pool_size: int = Field(default=32, ge=1)
    # A task that holds a session and opens another gets an error (clarion.db) instead of a
    # second connection. Always so on SQLite, where the second waits for the first; on
    # PostgreSQL only when set (the tests set it): decision 0033.
    check_nested_sessions: bool = False
    # Empty: "memory" on SQLite, "postgres" on PostgreSQL.
    queue: QueueBackend | None = None
    # Fernet key for provider credentials at rest; generated into var/secret.key when unset.
    secret_key: str = ""

    # Provider endpoints: the real hosts by default; `make run` points them at `clarion sim`.
    apns_production_url: str = "https://api.push.apple.com"
    apns_sandbox_url: str = "https://api.sandbox.push.apple.com"
    fcm_url: str = "https://fcm.googleapis.com"
    # Extra CA bundle trusted for provider TLS (the simulators' CA); the system store otherwise.
    provider_ca_file: str = ""
    # Provider timeouts (docs/delivery.md, "Timeouts"; decision 0030), each for one phase: a TCP
    # connection being established, its TLS handshake, and the answer to a request once it is
    # written on a stream. Time a request waits for a free stream is not counted: a provider
    # answering in 15 s behind a low stream limit is slow, not silent.
    provider_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    provider_tls_timeout_seconds: float = Field(default=10.0, gt=0)
    provider_response_timeout_seconds: float = Field(default=30.0, gt=0)

    # Delivery pipeline
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    # Jobs one worker process delivers at once, in each of its two lanes (campaign batches and
    # the rest, clarion.queue.Lane). On PostgreSQL a job spends much of its time
    # waiting on the database; measured with 1,000-recipient jobs: 8 → 5,300/s, 16 → 7,800/s,
    # 32 → 9,400/s (bench/delivery_throughput.py), for ~20 MB more memory.
    worker_concurrency: int = Field(default=32, ge=1)
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    retry_max_attempts: int = 8
    # A campaign fan-out's lease on its run, renewed every quarter of it while its process
    # lives (and at each page it writes): a run whose process died is taken over within the
    # lease and a scheduler tick (8 + 1 s), as a dead worker's delivery batches are.
    fan_out_lease_seconds: float = Field(default=8.0, gt=0)
    # A worker holds the delivery batches it claimed with a lease that it renews every
    # delivery_lease_renew_seconds while it is alive (one UPDATE for all of them), and each
    # worker looks for expired leases every lease_sweep_seconds: a dead worker's batches are
    # taken over within lease + sweep (8 + 1 s), a live worker's never, however slow the
    # provider, unless it misses 3 renewals in a row (decision 0032).
    delivery_lease_seconds: float = Field(default=8.0, gt=0)
    delivery_lease_renew_seconds: float = Field(default=2.0, gt=0)
    lease_sweep_seconds: float = Field(default=1.0, gt=0)
    # Outcomes are recorded while a batch is being sent, every progress_flush_seconds or
    # progress_flush_results outcomes, whichever comes first (one transaction for all the
    # batches a worker holds, decision 0032).
    progress_flush_seconds: float = Field(default=0.02, gt=0)
    progress_flush_results: int = Field(default=200, ge=1)
    # Requests a worker may have on the wire without an answer in the batch's journal (or, with
    # no journal, without a committed outcome), per provider: what a kill -9 sends again at
    # most. The limit follows the provider's least round trip, enough for delivery_target_rate
    # pushes/s (Little's law), between delivery_in_flight and delivery_on_wire: 128 against a
    # provider answering at once (4 kills of a worker sent 1,002 of 100,000 again with 256-400
    # held until the commit), ~1,000 at 50 ms, where a fixed 256 capped a worker at 1,796
    # pushes/s (decisions 0032, 0047). A provider call carries a quarter of delivery_in_flight,
    # 32 devices at most. Tests set both bounds low to catch a batch half-sent.
    delivery_in_flight: int = Field(default=128, ge=1)
    delivery_on_wire: int = Field(default=2000, ge=1)
    delivery_target_rate: float = Field(default=20_000.0, gt=0)
    # Where a worker writes its providers' answers the moment they come (clarion.delivery.journal,
    # decision 0047), so that a worker killed before recording them sends again only what was on
    # the wire. Workers of one machine share a subfolder named after it; empty:
    # <var_dir>/delivery-journal; off: no journal (a take-over counts every push it sends as
    # re-sent).
    delivery_journal: bool = True
    delivery_journal_dir: Path | None = None
    # A stopping worker (SIGTERM, Ctrl-C) waits this long at most for the requests on the wire
    # to be answered, then hands its batches back (above the HTTP/2 response timeout, 30 s).
    worker_stop_seconds: float = Field(default=35.0, ge=0)
    # pgqueuer re-dispatches the job of a worker whose heartbeat stopped after this long: the
    # jobs a dead worker had dequeued but not started (up to worker_concurrency of them) wait
    # that long. A live worker's job dispatched twice claims nothing (the lease), so it is as
    # short as the lease (beats every 4 s).
    job_heartbeat_seconds: float = 8.0
    # How often the outbox sweeper re-enqueues batches whose job was lost.
    sweep_interval_seconds: float = 15.0
    # How often the campaign scheduler looks for due campaigns (a campaign starts this late).
    scheduler_interval_seconds: float = Field(default=1.0, gt=0)
    # How often an idle automation dispatcher looks for due entries: a due entry waits at most
    # this long for its pass (a zero-delay automation measured 0.33 s p50, 0.42 s p99 from the
    # Trigger Events call to APNs, bench/automation_dispatch.py). A pass that found a full
    # page goes again at once.
    automation_poll_seconds: float = Field(default=0.2, gt=0)
    # Due entries one dispatcher pass claims, decides and writes in one transaction: what a
    # pass holds in memory, whatever the backlog (66 us of CPU an entry, ~0.2 s a full pass on
    # PostgreSQL).
    automation_pass_entries: int = Field(default=1000, ge=1, le=10_000)

    # API
    max_body_bytes: int = 1024 * 1024
    # The bulk routes of the Custom Data and Trigger Events APIs (10,000 users a call).
    max_bulk_body_bytes: int = 32 * 1024 * 1024
    # Audience files uploaded to `custom-audience/{name}/file`: streamed to disk, not memory.
    max_upload_bytes: int = 1024 * 1024 * 1024

    # Flat-file imports (docs/imports.md)
    # How often a worker process looks for import sources due for a poll.
    import_check_seconds: float = Field(default=30.0, gt=0)
    # file:// sources may only read under these folders (default: <var_dir>/imports).
    import_local_roots: list[Path] = Field(default_factory=list)
    # Daily exports (docs/exports.md): how often a worker looks for days due, and the folders
    # file:// destinations may write under (default: <var_dir>/exports).
    export_check_seconds: float = Field(default=60.0, gt=0)
    # How often a worker folds campaign event counts and stores finished days' influenced and
    # re-engaged opens (stats.tasks.keep_up).
    stats_interval_seconds: float = Field(default=60.0, gt=0)
    export_local_roots: list[Path] = Field(default_factory=list)
    # Extra CA certificates (PEM) trusted for FTPS, HTTPS and S3 endpoints with private CAs.
    connector_ca_file: str = ""

    # Outbound policy (clarion.outbound, docs/decisions/0017-outbound-policy.md): destinations
    # users choose (import sources, export destinations, GDPR callbacks, Web Push endpoints,
    # FCM token URIs) may not reach loopback, private, link-local, multicast or reserved
    # addresses, except these host names and networks (comma-separated: "minio.internal,
    # 10.1.2.0/24"). Provider URLs above are the operator's and are not checked.
    outbound_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Plain http:// for GDPR callbacks and Web Push endpoints (https:// only otherwise).
    outbound_allow_http: bool = False

    # Dashboard session cookies carry the Secure flag: unset, when the request came over HTTPS
    # (as uvicorn sees it: behind a TLS proxy, set this to true, or FORWARDED_ALLOW_IPS).
    dashboard_secure_cookies: bool | None = None

    # Days a GDPR review's archive (everything held on one person) is kept once done; then it
    # is deleted and the request says so. A week: the callback announces the archive at once,
    # and a week still covers a weekend or a missed callback, well within the month GDPR gives
    # to answer the person (art. 12(3)); a copy kept longer only widens what a leak could take
    # (storage limitation, art. 5(1)(e)).
    gdpr_archive_days: int = Field(default=7, ge=1)

    # Days of the event log kept (docs/retention.md); 0 keeps every day. 400: the dashboard's
    # longest period is 365 days and the daily exports look back 31; a day that statistics or an
    # export still need is kept longer whatever these say (clarion.retention.service).
    push_events_retention_days: int = Field(default=400, ge=0)
    inapp_events_retention_days: int = Field(default=400, ge=0)
    tracked_events_retention_days: int = Field(default=400, ge=0)

    # Logs (docs/operations.md, "Logs"): "text" for people, "json" for one JSON object a line;
    # the level of Clarion's own loggers; and a line per HTTP request (method, path with its
    # key taken out, status, duration), off by default as uvicorn's was.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = False

    # How long a process keeps a successful API key lookup: a key rotated elsewhere keeps
    # working here for at most this long. 0 looks every key up on every call.
    auth_cache_seconds: float = Field(default=5.0, ge=0)

    # API rate limits (docs/rate-limits.md, decision 0040): token buckets of calls per second,
    # each holding one second of calls as its burst; 0 turns a limit off. Server APIs (REST key
    # and app key): per app key (Live and Dev apart) and per company (its one REST key), shared
    # by every API process through PostgreSQL when scaled out. Batch publishes no number for
    # 1.x (spec §2.2). One API process accepts at most ~1,500 transactional sends/s (decision
    # 0005), so no integration meets these on the embedded default; scaled out, one key gets
    # what 1-2 processes serve and one company what ~3 do, the rest staying for the others.
    # The dashboard and the admin API are not limited.
    api_rate_limit: float = Field(default=2000.0, ge=0, allow_inf_nan=False)
    api_company_rate_limit: float = Field(default=5000.0, ge=0, allow_inf_nan=False)
    # SDK API, counted in each API process: per installation (an app start makes 3-5 calls; a
    # device at 20/s is looping) and per client address (carrier NAT puts many devices behind
    # one address). Loopback addresses are not limited: a proxy on this machine that does not
    # pass the client's address would put every device in one bucket. Behind a proxy elsewhere,
    # set FORWARDED_ALLOW_IPS so that the address is the device's, not the proxy's.
    sdk_install_rate_limit: float = Field(default=20.0, ge=0, allow_inf_nan=False)
    sdk_address_rate_limit: float = Field(default=1000.0, ge=0, allow_inf_nan=False)
    # Where the server APIs' buckets live: "memory" (this process), "postgres" (shared by the
    # processes of CLARION_DATABASE_URL). Empty: "memory" on SQLite, "postgres" on PostgreSQL.
    rate_limit_store: RateLimitStore | None = None
    # Prometheus metrics (docs/metrics.md): `/metrics` on this port, apart from the API so
    # that it is never public by accident; 0 serves none. On the address below (loopback by
    # default: set 0.0.0.0 for a Prometheus on another machine). With several processes on one
    # machine, set PROMETHEUS_MULTIPROC_DIR (wiped before they start) and give one of them the
    # port: it serves the sum of all.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("outbound_allow", mode="before")
    @classmethod
    def _allow_list(cls, value: Any) -> Any:
        from clarion.outbound import parse_allowed

        if isinstance(value, str):
            # Comma-separated, or a JSON list as the other list settings take.
            if value.lstrip().startswith("["):
                value = json.loads(value)
            else:
                value = [item.strip() for item in value.split(",") if item.strip()]
        parse_allowed(value)  # a typo fails at start, not at the first refused connection
        return value

    @model_validator(mode="after")
    def _rate_limit_store(self) -> Settings:
        if self.rate_limit_store is RateLimitStore.POSTGRES and self.is_sqlite:
            raise ValueError(
                "CLARION_RATE_LIMIT_STORE=postgres needs CLARION_DATABASE_URL to be a "
                "PostgreSQL database (on SQLite, leave it empty or set it to memory)"
            )
        return self

    @property
    def resolved_rate_limit_store(self) -> RateLimitStore:
        if self.rate_limit_store is not None:
            return self.rate_limit_store
        return RateLimitStore.MEMORY if self.is_sqlite else RateLimitStore.POSTGRES

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'clarion.db').as_posix()}"

    @property
    def resolved_import_local_roots(self) -> tuple[Path, ...]:
        return tuple(self.import_local_roots) or (self.var_dir / "imports",)

    @property
    def resolved_export_local_roots(self) -> tuple[Path, ...]:
        return tuple(self.export_local_roots) or (self.var_dir / "exports",)

    @property
    def delivery_journal_folder(self) -> Path | None:
        """A folder of this machine's own, even where the folder above is a shared mount: a
        worker of another machine could read a journal its writer's page cache had not yet
        flushed there, and miss requests that went out."""
        if not self.delivery_journal:
            return None
        machine = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "localhost"
        return (self.delivery_journal_dir or self.var_dir / "delivery-journal") / machine

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_queue(self) -> QueueBackend:
        if self.queue is not None:
            return self.queue
        return QueueBackend.MEMORY if self.is_sqlite else QueueBackend.POSTGRES
