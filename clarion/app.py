"""The FastAPI application: routers, error handlers, and the runtime's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from clarion.apps.api import router as apps_router
from clarion.audiences.api import router as audiences_router
from clarion.campaigns.api import router as campaigns_router
from clarion.capping.api import router as push_caps_router
from clarion.clock import SYSTEM_CLOCK, Clock
from clarion.config import Settings
from clarion.custom_data.api import router as custom_data_router
from clarion.dashboard.api import router as dashboard_router
from clarion.dashboard.web import STATIC_DIR
from clarion.events.api import router as trigger_events_router
from clarion.exports.api import router as exports_router
from clarion.gdpr.api import router as gdpr_router
from clarion.http import (
    BodySizeLimit,
    JsonBodies,
    RequestIds,
    SdkRateLimit,
    TrailingSlash,
    install_error_handlers,
)
from clarion.imports.api import router as imports_router
from clarion.inapp.api import FetchFastPath
from clarion.inapp.api import router as inapp_router
from clarion.inapp.api import sdk_router as inapp_sdk_router
from clarion.inapp.api import themes_router as inapp_themes_router
from clarion.metrics import RequestMetrics
from clarion.monitoring import metrics_wanted, start_metrics
from clarion.openapi import install_openapi
from clarion.probes import probes_router
from clarion.ratelimit import RateLimits
from clarion.runtime import Runtime
from clarion.sdk.api import EventsFastPath, SdkCors
from clarion.sdk.api import router as sdk_router
from clarion.sdk.api import web_router as web_sdk_router
from clarion.transactional.api import router as transactional_router


def create_app(settings: Settings, *, workers: bool, clock: Clock = SYSTEM_CLOCK) -> FastAPI:
    """`workers`: also run delivery workers and the outbox sweep in this process. `clock`:
    what /readyz measures the loops' heartbeats and its cache with, and what refills the rate
    limits' buckets."""
    runtime = Runtime(settings, clock=clock)
    rate_limits = RateLimits(settings, runtime.engine, clock=clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Counting from before the workers start until they have stopped: what they deliver
        # at start (the outbox sweep) and record while stopping is counted too.
        metrics = await start_metrics(settings, runtime.engine, runtime.sessions)
        try:
            await runtime.start(workers=workers)
            try:
                yield
            finally:
                await runtime.stop()
        finally:
            await metrics.stop()

    app = FastAPI(
        title="Clarion",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.rate_limits = rate_limits  # read by clarion.http.rest_app
    install_error_handlers(app)
    install_openapi(app, settings)
    app.include_router(transactional_router)
    app.include_router(campaigns_router)
    app.include_router(inapp_router)
    app.include_router(inapp_sdk_router)
    app.include_router(inapp_themes_router)
    app.include_router(sdk_router)
    app.include_router(web_sdk_router)
    app.include_router(trigger_events_router)
    app.include_router(custom_data_router)
    app.include_router(audiences_router)
    app.include_router(imports_router)
    app.include_router(exports_router)
    app.include_router(gdpr_router)
    app.include_router(apps_router)
    app.include_router(push_caps_router)
    app.include_router(probes_router(runtime))

    # The static files first: the dashboard answers every other /dashboard path.
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.include_router(dashboard_router)
    # TrailingSlash routes both spellings of a path: no redirect is ever needed.
    app.router.redirect_slashes = False
    app.add_middleware(TrailingSlash)
    app.add_middleware(JsonBodies)
    # The SDK's event batches, inside the body limit: what it reads is at most the limit.
    app.add_middleware(
        EventsFastPath,
        key_cache=runtime.key_cache,
        sessions=runtime.sessions,
        intake=runtime.sdk_events,
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        bulk_max_bytes=settings.max_bulk_body_bytes,
        upload_max_bytes=settings.max_upload_bytes,
    )
    # The SDK's in-app fetches are answered before anything else runs (but CORS, below).
    app.add_middleware(FetchFastPath, key_cache=runtime.key_cache, feed=runtime.inapp)
    # The SDK API's rate limits, before the fast paths, inside CORS (a web page can read the 429).
    app.add_middleware(SdkRateLimit, limits=rate_limits)
    # Around the fast path, so that its answers to web pages carry the CORS headers too, and
    # a page of an origin the app does not allow is refused before anything runs.
    app.add_middleware(SdkCors, key_cache=runtime.key_cache, sessions=runtime.sessions)
    if metrics_wanted(settings):
        app.add_middleware(RequestMetrics)  # every call, whoever answers it
    # Outermost: every answer carries its request id, and every line logged while serving it
    # (the metrics' own timing included).
    app.add_middleware(RequestIds, access=settings.access_log)

    return app
