"""SDK API: what apps and web pages call with their app key. Reference: docs/sdk-api.md."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clarion.apps.schemas import MAX_ORIGIN_LENGTH
from clarion.apps.service import AppAccess, KeyCache, authenticate_app
from clarion.automations.service import enter_stored
from clarion.db import utcnow
from clarion.errors import ApiMisuseError, ClarionError, NotFoundError
from clarion.formats import Text
from clarion.http import RuntimeDep, SdkApp, SessionDep, error_response, send_answer
from clarion.logs import annotate
from clarion.sdk import service
from clarion.sdk.schemas import (
    Accepted,
    AppOpenIn,
    CustomIdSet,
    InAppEventsIn,
    InstallationRead,
    InstallationUpsert,
    ProfileEdited,
    ProfileEditsIn,
    PushOpenIn,
    TrackedEventsIn,
    VapidKey,
    read_plain_events,
)
from clarion.sdk.scripts import load_scripts, not_modified
from clarion.sdk.service import EventIntake, check_install_id

router = APIRouter(prefix="/sdk/v1/{api_key}", tags=["sdk"])
InstallId = Annotated[Text, Path(max_length=128)]


@router.put("/installations/{install_id}", response_model=InstallationRead)
async def put_installation(
    install_id: InstallId,
    body: InstallationUpsert,
    access: SdkApp,
    session: SessionDep,
    runtime: RuntimeDep,
) -> InstallationRead:
    installation = await service.upsert_installation(
        session, access=access, install_id=install_id, data=body, outbound=runtime.outbound
    )
    return InstallationRead.model_validate(installation)


@router.put("/installations/{install_id}/custom_id", response_model=InstallationRead)
async def attach_custom_id(
    install_id: InstallId, body: CustomIdSet, access: SdkApp, session: SessionDep
) -> InstallationRead:
    installation = await service.set_custom_id(
        session, access=access, install_id=install_id, custom_id=body.custom_id
    )
    return InstallationRead.model_validate(installation)


@router.delete("/installations/{install_id}/custom_id", response_model=InstallationRead)
async def detach_custom_id(
    install_id: InstallId, access: SdkApp, session: SessionDep
) -> InstallationRead:
    installation = await service.set_custom_id(
        session, access=access, install_id=install_id, custom_id=None
    )
    return InstallationRead.model_validate(installation)


@router.post("/installations/{install_id}/events", response_model=Accepted, status_code=202)
async def track_events(
    install_id: InstallId,
    body: TrackedEventsIn,
    access: SdkApp,
    session: SessionDep,
    runtime: RuntimeDep,
) -> Accepted:
    rows = await service.track_events(session, access=access, install_id=install_id, data=body)
    # As EventsFastPath's batches: automations enter them in this transaction.
    await enter_stored(session, runtime.automations, rows, now=utcnow())
    return Accepted(accepted=len(rows))


@router.post("/installations/{install_id}/app-opens", response_model=Accepted, status_code=202)
async def report_app_open(
    install_id: InstallId, body: AppOpenIn, access: SdkApp, session: SessionDep
) -> Accepted:
    await service.record_app_open(session, access=access, install_id=install_id, data=body)
    return Accepted(accepted=1)


@router.post("/installations/{install_id}/opens", response_model=Accepted, status_code=202)
async def report_push_open(
    install_id: InstallId, body: PushOpenIn, access: SdkApp, session: SessionDep
) -> Accepted:
    await service.record_push_open(session, access=access, install_id=install_id, data=body)
    return Accepted(accepted=1)


@router.post("/installations/{install_id}/inapp-events", response_model=Accepted, status_code=202)
async def report_inapp_events(
    install_id: InstallId, body: InAppEventsIn, access: SdkApp, session: SessionDep
) -> Accepted:
    count = await service.record_inapp(session, access=access, install_id=install_id, data=body)
    return Accepted(accepted=count)


@router.post("/installations/{install_id}/profile/edits", response_model=ProfileEdited)
async def edit_profile(
    install_id: InstallId, body: ProfileEditsIn, access: SdkApp, session: SessionDep
) -> ProfileEdited:
    """The Web SDK's profile().edit (decision 0024)."""
    custom_id = await service.edit_profile(session, access=access, install_id=install_id, data=body)
    accepted = len(body.operations) + len({"language", "region"} & body.model_fields_set)
    return ProfileEdited(custom_id=custom_id, accepted=accepted)


@router.get("/webpush/vapid-key", response_model=VapidKey)
async def get_vapid_key(access: SdkApp) -> VapidKey:
    if access.vapid_public_key is None:
        raise NotFoundError("this app has no Web Push key")
    return VapidKey(application_server_key=access.vapid_public_key)


_EVENTS_PATH = re.compile(r"/sdk/v1/([^/]+)/installations/([^/]+)/events")
_JSON = b"application/json"


class EventsFastPath:
    """Answers the SDK's event batches before FastAPI routes the request, when it can.

    With an app key this process knows (KeyCache, else one lookup for all the calls waiting
    on it), a well-formed install id and a JSON body that TrackedEventsIn accepts
    (read_plain_events for the usual ones, the model for the others), the batch goes to the
    EventIntake (stored by loop turn) and the 202 is sent once it is committed. FastAPI's
    routing, dependencies, validation and a transaction per call cost ~1.6 ms of CPU per call
    (SQLite, bench/sdk_events.py). Anything else (an unknown key, a malformed id or body, an
    unknown installation) goes on to the route with the body as read, and the route answers it
    in Batch's format. Inside BodySizeLimit: a body over the limit never gets here whole.
    """

    def __init__(
        self,
        app: ASGIApp,
        key_cache: KeyCache,
        sessions: async_sessionmaker[AsyncSession],
        intake: EventIntake,
    ) -> None:
        self.app = app
        self.key_cache = key_cache
        self.sessions = sessions
        self.intake = intake
        self._lookups: dict[str, asyncio.Future[AppAccess]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _EVENTS_PATH.fullmatch(scope["path"])
        if match is None or not _declares_json(scope):
            await self.app(scope, receive, send)
            return
        access = self.key_cache.app(match[1]) or await self._looked_up(match[1])
        if access is None:
            await self.app(scope, receive, send)
            return
        annotate(app_id=access.app_id)  # on the request's log lines, as SdkApp does for routes
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if messages[-1]["type"] == "http.request":
            try:
                install_id = check_install_id(match[2])
                events = read_plain_events(body)
                if events is None:
                    events = TrackedEventsIn.model_validate_json(body).as_tuples()
            except (ClarionError, ValidationError):
                pass
            else:
                app_id = access.app_id
                if await self.intake.track(app_id=app_id, install_id=install_id, events=events):
                    answer = b'{"accepted":%d}' % len(events)
                    headers = [
                        (b"content-type", _JSON),
                        (b"content-length", str(len(answer)).encode()),
                    ]
                    await send_answer(send, 202, headers, answer)
                    return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _looked_up(self, api_key: str) -> AppAccess | None:
        """The key's app read once for every call that finds it missing from the KeyCache, or
        None (an unknown key: the route answers it). A cached key expires every
        CLARION_AUTH_CACHE_SECONDS (5 s), and under load the calls that arrived until a route
        had cached it again all took the route: 91 of 20,800 calls in bench/sdk_events.py, at
        ~2 ms of CPU each, 5% of the process's CPU."""
        lookup = self._lookups.get(api_key)
        if lookup is None:
            lookup = asyncio.ensure_future(
                authenticate_app(self.sessions, api_key=api_key, cache=self.key_cache)
            )
            self._lookups[api_key] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(api_key, None))
        try:
            return await asyncio.shield(lookup)
        except ClarionError:
            return None


def _declares_json(scope: Scope) -> bool:
    declared = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    return declared is not None and declared.split(b";")[0].strip().lower() == _JSON


# The Web SDK's scripts: public, no key (docs/api-keys.md), read once as the process starts.
web_router = APIRouter(prefix="/sdk/web/v1", tags=["sdk"], include_in_schema=False)
_SCRIPTS = load_scripts()


@web_router.get("/{file_name}")
async def web_sdk_script(
    file_name: Annotated[Text, Path(max_length=64)],
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """`clarion.js` and `clarion-sw.js`, and each under its content-hashed name
    (`clarion.<hash>.js`, the hash being the stable path's ETag)."""
    script = _SCRIPTS.get(file_name)
    if script is None:
        raise NotFoundError(
            f"no file {file_name!r}: the Web SDK is clarion.js and clarion-sw.js, or their "
            "hashed names (clarion.<ETag>.js) for the build this server runs"
        )
    if not_modified(script.etag, if_none_match):
        return Response(status_code=304, headers=script.headers)
    return Response(script.body, headers=script.headers)


# What the SDK sends: JSON bodies, and its last ETag on the in-app fetch.
_PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, PUT, POST, DELETE"),
    (b"access-control-allow-headers", b"Content-Type, If-None-Match"),
    (b"access-control-expose-headers", b"ETag"),
    # A browser keeps the answer ten minutes at most (Chromium caps any value at 2 hours); an
    # origin removed from the list is refused on its next call whatever browsers cached.
    (b"access-control-max-age", b"600"),
]


class SdkCors:
    """CORS for the SDK API (`/sdk/v1/{api_key}/...`): web pages of the app's allowed origins
    may call it, and no other page.

    A request with an Origin header (a browser's) is checked against the app its key names: a
    preflight from an allowed origin answers 204, the other calls go on with the CORS headers
    added to whatever answers them; an origin not allowed is refused (403/12) before anything
    runs, so nothing is written. A request without Origin (a native app, a server) passes
    untouched: the cost on the SDK's hottest route, the fetch's 304 (FetchFastPath, inside this
    one), is one scan of its headers. The allowed origins come with the key's AppAccess from
    the KeyCache, like the key itself.
    """

    def __init__(
        self, app: ASGIApp, key_cache: KeyCache, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        self.app = app
        self.key_cache = key_cache
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/sdk/v1/"):
            await self.app(scope, receive, send)
            return
        origin: bytes | None = None
        asks_method = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                asks_method = True
        api_key = scope["path"][8:].partition("/")[0]
        if origin is None or not api_key:
            await self.app(scope, receive, send)
            return
        allow = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        # Inline, not awaited, when the key is cached: this runs before each of the fast path's
        # 304s, ~45 us each (measured in-process: 2.4 us added with an allowed Origin, 0.8 us
        # without Origin; 4.5 us when awaited through a method and a regular expression).
        access = self.key_cache.app(api_key)
        try:
            if access is None:
                # Cached by the lookup: the route's own authentication (SdkApp) finds it there.
                access = await authenticate_app(
                    self.sessions, api_key=api_key, cache=self.key_cache
                )
            annotate(app_id=access.app_id)
            if origin.decode("latin-1") not in access.allowed_origins and not _same_origin(
                scope, origin
            ):
                raise _origin_refused(origin.decode("latin-1"))
        except ClarionError as exc:  # an unknown key (401), an origin not allowed (403)
            # Readable by the page (a request the browser did not preflight), so that the SDK's
            # debug mode can say why: the answer tells the page only what it sent.
            await _refuse(send, exc, allow)
            return
        if scope["method"] == "OPTIONS" and asks_method:
            await send_answer(send, 204, allow + _PREFLIGHT)
            return
        allow.append((b"access-control-expose-headers", b"ETag"))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *allow]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _same_origin(scope: Scope, origin: bytes) -> bool:
    """A page Clarion serves itself (a demo page, /docs): browsers send Origin on its PUTs and
    POSTs too, and it needs no entry. Behind a proxy that ends TLS, the scheme is the proxy's
    (uvicorn's --proxy-headers); otherwise such a page is listed like any other."""
    host = next((v for k, v in scope["headers"] if k == b"host"), None)
    return host is not None and origin == scope.get("scheme", "http").encode() + b"://" + host


def _origin_refused(origin: str) -> ApiMisuseError:
    shown = origin if len(origin) <= MAX_ORIGIN_LENGTH else origin[:MAX_ORIGIN_LENGTH] + "…"
    return ApiMisuseError(
        f"the origin {shown} may not call the SDK API with this key: add it to the app's "
        "allowed origins (dashboard: the app's Settings, Allowed origins; admin API: "
        "PUT /admin/v1/apps/{app_id}/allowed-origins)"
    )


async def _refuse(send: Send, error: ClarionError, headers: list[tuple[bytes, bytes]]) -> None:
    body = bytes(error_response(error).body)
    length = str(len(body)).encode()
    headers = [*headers, (b"content-type", b"application/json"), (b"content-length", length)]
    await send_answer(send, error.status, headers, body)
