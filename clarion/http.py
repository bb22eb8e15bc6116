"""HTTP plumbing shared by every API module: the unit of work, auth aliases, Batch-format errors.

The session dependency runs with scope="function": it commits when the route function returns
and before the response is sent, so a client holding a 2xx can rely on what it wrote being
committed. No route writes delivery batches through it: the send intake (and the campaign fan-out
and delivery retries, outside requests) commit batches in a transaction of their own, then enqueue
their jobs (see docs/decisions/0005-unit-of-work.md).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clarion.apps.service import (
    AppAccess,
    CompanyAccess,
    authenticate_app,
    authenticate_company,
    require_live_key,
)
from clarion.errors import (
    ClarionError,
    MalformedJsonError,
    MalformedParameterError,
    NotFoundError,
    from_validation_errors,
)
from clarion.logs import annotate, log_context, redact
from clarion.ratelimit import RateLimited, RateLimits, RateLimitStoreUnreachable
from clarion.runtime import Runtime

access_log = logging.getLogger("clarion.access")


async def get_runtime(request: Request) -> Runtime:
    # async on purpose: FastAPI runs a plain `def` dependency in its threadpool, a thread hop
    # (~100-200 µs on this machine kind) on every request for one attribute read.
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


# Declared as a security scheme, so that the OpenAPI document says which routes take the key.
RestKeyHeader = APIKeyHeader(
    name="X-Authorization",
    scheme_name="RestApiKey",
    description="The company's REST API key.",
    auto_error=False,  # no key is Batch's 401 AUTHENTICATION_INVALID, raised below
)


async def rest_company(
    runtime: RuntimeDep,
    x_authorization: Annotated[str | None, Security(RestKeyHeader)] = None,
) -> CompanyAccess:
    company = await authenticate_company(
        runtime.sessions, rest_key=x_authorization, cache=runtime.key_cache
    )
    annotate(company_id=company.id)
    return company


RestCompany = Annotated[CompanyAccess, Depends(rest_company)]


async def rest_app(
    request: Request,
    runtime: RuntimeDep,
    company: RestCompany,
    api_key: Annotated[str, Path()],
) -> AppAccess:
    """Batch's server APIs: the REST key in X-Authorization, the app's key in the path.

    Rate limited per app key and per company once the keys are known (a call with an unknown
    key is refused before it costs a bucket); the admin API (RestCompany alone) and the
    dashboard are not."""
    access = await authenticate_app(
        runtime.sessions, api_key=api_key, company=company, cache=runtime.key_cache
    )
    annotate(app_id=access.app_id)
    limits: RateLimits = request.app.state.rate_limits
    await limits.api_call(app_id=access.app_id, is_dev=access.is_dev, company_id=company.id)
    return access


# The app's Live or Dev key. Only the routes Batch gives the Dev key take it (transactional
# sends and campaign create, update and delete), and what they do with it reaches debug
# installations only; the table of every route is in docs/security.md.
RestApp = Annotated[AppAccess, Depends(rest_app)]


async def rest_app_live(access: RestApp) -> AppAccess:
    """The Live key only: 403/12 for the Dev key, before the route reads or changes anything."""
    require_live_key(access)
    return access


# Every route that reads or changes the app's data or settings.
RestAppLive = Annotated[AppAccess, Depends(rest_app_live)]


async def sdk_app(runtime: RuntimeDep, api_key: Annotated[str, Path()]) -> AppAccess:
    """The SDK API: only the app's key, which ships inside the app as with Batch."""
    access = await authenticate_app(runtime.sessions, api_key=api_key, cache=runtime.key_cache)
    annotate(app_id=access.app_id)
    return access


SdkApp = Annotated[AppAccess, Depends(sdk_app)]


async def send_answer(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    """A whole answer from a pure ASGI middleware (the SDK API's fast paths)."""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(error: ClarionError) -> JSONResponse:
    headers = None
    if isinstance(error, RateLimited | RateLimitStoreUnreachable):
        headers = {"Retry-After": str(error.retry_after)}
    return JSONResponse(
        {"code": error.code, "message": error.message}, status_code=error.status, headers=headers
    )


def validation_error(exc: RequestValidationError) -> ClarionError:
    return from_validation_errors(exc.errors())


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """The 405's Allow header (RFC 9110 §15.5.6): every method some route takes at this path.
    Starlette's names only the first route matching the path (PUT where PUT and PATCH are two
    routes). Runs only on a 405: 6 methods x ~20 top-level routes."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClarionError)
    async def _clarion(_: Request, exc: ClarionError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFoundError("no such route"))
        if exc.status_code == 400 and isinstance(exc.__cause__, _BodyTooLarge):
            # FastAPI reads the body under `except Exception`, so a body cut off by
            # BodySizeLimit (chunked: no Content-Length to refuse it by) comes back as this.
            return error_response(exc.__cause__.error)
        if exc.status_code == 400:
            # FastAPI's answer to a body it could not decode (not UTF-8, an integer of more
            # than 4,300 digits): malformed JSON, in Batch's words.
            return error_response(MalformedJsonError("the body is not valid JSON"))
        if exc.status_code == 405:
            return JSONResponse(
                {"code": 20, "message": "ROUTE_NOT_FOUND: method not allowed"},
                status_code=405,
                headers={"Allow": allowed_methods(request)},
            )
        return JSONResponse({"code": 1, "message": str(exc.detail)}, status_code=exc.status_code)


# Batch's REST APIs (the routes its client libraries call).
_BATCH_ROUTES = re.compile(r"/1\.[01]/")
# What clients that forget to declare JSON send instead: Python's requests with data=<str> sends
# no Content-Type, Ruby's Net::HTTP#post and PHP's curl with a string body send a form's type.
_UNDECLARED_JSON = (b"", b"application/x-www-form-urlencoded", b"text/plain")


class JsonBodies:
    """Batch's REST routes read their body as JSON whether or not it is declared as such.

    Only on /1.0/ and /1.1/: those take no form, and their key is a header (X-Authorization)
    that a cross-site form cannot send, so reading such a body as JSON opens no request forgery.
    A body that is not JSON is then refused as such (400/32)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _BATCH_ROUTES.match(scope["path"]):
            declared = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if declared.split(b";")[0].strip().lower() in _UNDECLARED_JSON:
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                headers.append((b"content-type", b"application/json"))
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


class TrailingSlash:
    """Every route answers with and without a trailing slash, itself: routes are declared
    without one, and a path that ends with one is routed as if it did not.

    Batch's clients write some routes both ways (`/data/users/`, `/events/users/`, spec
    Appendix B), and Starlette's answer to the other spelling is a 307 redirect, which PHP's
    curl and Go's net/http do not follow for a POST (or follow as a GET, losing the body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/"}
            raw = scope.get("raw_path")
            if raw:
                scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


# Bulk routes of Batch's data APIs carry up to 10,000 users, ids or 1,000 events per call, which
# does not fit in the 1 MiB that every other route allows.
BULK_ROUTES = re.compile(r"/1\.[01]/[^/]+/(data/users|events/users|custom-audience/[^/]+)/?")
# Audience files (API and dashboard): streamed to disk as they arrive, so only disk bounds them.
UPLOAD_ROUTES = re.compile(
    r"/1\.[01]/[^/]+/custom-audience/[^/]+/file/?|/dashboard/apps/\d+/audiences/upload/?"
)


def body_limit(path: str, max_bytes: int, bulk_max_bytes: int, upload_max_bytes: int) -> int:
    """The body-size limit of a request path (shared with the OpenAPI document)."""
    if BULK_ROUTES.fullmatch(path):
        return bulk_max_bytes
    if UPLOAD_ROUTES.fullmatch(path):
        return upload_max_bytes
    return max_bytes


class BodySizeLimit:
    """Refuses bodies over the limit with Batch's 400/31, before any of it is parsed."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, bulk_max_bytes: int, upload_max_bytes: int
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.bulk_max_bytes = bulk_max_bytes
        self.upload_max_bytes = upload_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(
            scope["path"], self.max_bytes, self.bulk_max_bytes, self.upload_max_bytes
        )
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await error_response(_BodyTooLarge(limit).error)(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge as exc:
            await error_response(exc.error)(scope, receive, send)


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.error = MalformedParameterError(f"body: larger than {limit // 1024} KiB")


# The SDK API's calls, with the installation where the path names one.
_SDK_PATH = re.compile(r"/sdk/v1/([^/]+)(?:/installations/([^/]+))?")


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


class SdkRateLimit:
    """The SDK API's limits, per installation and per client address, before anything else
    runs (the fast paths included): a refused call costs a few us and no database.

    The address is the connection's, or X-Forwarded-For's from a proxy that uvicorn trusts
    (FORWARDED_ALLOW_IPS, 127.0.0.1 by default). A loopback address has no limit of its own: it
    is a local proxy that did not pass the client's address (every device would share it), or
    a tool on this machine."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS":
            match = _SDK_PATH.match(scope["path"])
            if match is not None:
                client = scope.get("client")
                address = client[0] if client else None
                try:
                    self.limits.sdk_call(
                        api_key=match[1],
                        install_id=match[2],
                        address=None if address is None or _loopback(address) else address,
                    )
                except RateLimited as exc:
                    await error_response(exc)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


# An incoming X-Request-Id is kept when it looks like one (a proxy's or a client's UUID, a
# trace id): up to 128 of these characters. Anything else (a line break that would forge a log
# line, kilobytes) is replaced by an id of our own.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}")


class RequestIds:
    """Outermost: each request gets an id, the incoming X-Request-Id or a new one, carried by
    every log line written while it is served and echoed in the answer's X-Request-Id; and,
    with CLARION_ACCESS_LOG, one line per request (the path's key taken out, clarion.logs)."""

    def __init__(self, app: ASGIApp, *, access: bool) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        # 16 random bytes: unique across processes and restarts without coordination.
        raw = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(16).encode()
        request_id = raw.decode()
        status = 500  # what the client sees when the app fails before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", raw)]
                message = {**message, "headers": headers}
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.access:
                    path = redact(scope["path"])
                    milliseconds = round((time.perf_counter() - started) * 1000, 1)
                    access_log.info(
                        "%s %s %d %.1f ms",
                        scope["method"],
                        path,
                        status,
                        milliseconds,
                        extra={
                            "fields": {
                                "method": scope["method"],
                                "path": path,
                                "status": status,
                                "duration_ms": milliseconds,
                            }
                        },
                    )
