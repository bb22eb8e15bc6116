"""The dashboard's routes for signing in, apps, keys, provider credentials and the team.

Thin, like every api.py: each route checks the role, calls a service and renders a page. The
other pages live beside it (campaign_pages, automation_pages, inapp_pages, audience_pages,
people_pages) and are
mounted here.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps import service as apps_service
from clarion.apps.schemas import (
    MAX_ALLOWED_ORIGINS,
    MAX_ORIGIN_LENGTH,
    AllowedOriginsIn,
    ApnsCredentialsIn,
    AppCreate,
    FcmCredentialsIn,
    WebPushCredentialsIn,
)
from clarion.capping import service as capping_service
from clarion.capping.schemas import MAX_CAPPED_LABELS, PushCapsIn
from clarion.dashboard import (
    audience_pages,
    automation_pages,
    campaign_pages,
    inapp_pages,
    people_pages,
    service,
)
from clarion.dashboard.models import Role
from clarion.dashboard.schemas import UserChange, UserCreate
from clarion.dashboard.service import Viewer
from clarion.dashboard.web import (
    SESSION_COOKIE,
    TEMPLATES,
    PageRoute,
    ViewerDep,
    redirect,
    render,
    secure_cookies,
    validated,
)
from clarion.db import utcnow
from clarion.delivery.service import send_test_push
from clarion.errors import ClarionError, MalformedParameterError, NotFoundError
from clarion.formats import DbInt, Text
from clarion.http import RuntimeDep, SessionDep

router = APIRouter(prefix="/dashboard", route_class=PageRoute, include_in_schema=False)

# Sign-in is protected from cross-site posting by a double-submit cookie: there is no session
# (and so no session CSRF token) yet.
_LOGIN_CSRF_COOKIE = "clarion_login_csrf"


def _safe_next(path: str) -> str:
    # Only a path of this dashboard: never an open redirect to another site.
    return path if path.startswith("/dashboard/") and not path.startswith("//") else "/dashboard/"


@router.get("/login")
async def login_page(request: Request, next: str = "/dashboard/") -> HTMLResponse:
    return _login(request, next_path=next)


def _login(
    request: Request, *, next_path: str, error: str = "", email: str = "", status: int = 0
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = TEMPLATES.TemplateResponse(
        request,
        "login.html",
        {
            "login_csrf": token,
            "next": _safe_next(next_path),
            "error": error,
            "email": email,
            "viewer": None,
            "apps": [],
        },
        status_code=status or (401 if error else 200),
    )
    response.set_cookie(
        _LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request),
        path="/dashboard/login",
    )
    return response


@router.post("/login")
async def login(
    request: Request,
    session: SessionDep,
    email: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/dashboard/",
) -> Response:
    expected = request.cookies.get(_LOGIN_CSRF_COOKIE, "")
    if not service.tokens_match(expected, csrf_token):
        return _login(
            request,
            next_path=next,
            email=email,
            error="The sign-in form expired: please try again.",
        )
    try:
        token, _ = await service.sign_in(
            session,
            email=email,
            password=password,
            client=service.client_address(request.client.host if request.client else None),
            now=utcnow(),
        )
    except ClarionError as exc:
        return _login(
            request,
            next_path=next,
            email=email,
            error=exc.detail.capitalize() + ".",
            status=exc.status,
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        max_age=int(service.SESSION_LIFETIME.total_seconds()),
        path="/dashboard",
    )
    response.delete_cookie(_LOGIN_CSRF_COOKIE, path="/dashboard/login")
    return response


@router.post("/logout")
async def logout(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    await service.sign_out(session, token=request.cookies.get(SESSION_COOKIE, ""))
    response = redirect("/dashboard/login")
    response.delete_cookie(SESSION_COOKIE, path="/dashboard")
    return response


@router.get("")
async def home(request: Request, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    return await render(request, session, viewer, "apps.html")


@router.get("/switch")
async def switch_app(viewer: ViewerDep, session: SessionDep, app_id: DbInt) -> Response:
    await service.company_app(session, viewer, app_id)
    return redirect(f"/dashboard/apps/{app_id}/campaigns")


@router.post("/apps")
async def create_app(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    name: Annotated[str, Form()] = "",
    platform: Annotated[str, Form()] = "",
    default_timezone: Annotated[str, Form()] = "UTC",
) -> HTMLResponse:
    service.require_admin(viewer)
    fields = {"name": name, "platform": platform, "default_timezone": default_timezone or "UTC"}
    try:
        app_in = validated(AppCreate, fields)
    except ClarionError as exc:
        return await render(
            request, session, viewer, "apps.html", status=400, error=exc.message, form=fields
        )
    app, keys = await apps_service.create_app(
        session, company_id=viewer.company_id, app_in=app_in, box=runtime.box
    )
    return await render(
        request, session, viewer, "settings.html", app=app, new_keys=keys, status=201
    )


@router.get("/apps/{app_id}/settings")
async def settings_page(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep
) -> HTMLResponse:
    app, _ = await service.company_app(session, viewer, app_id)
    return await render(request, session, viewer, "settings.html", app=app)


@router.post("/apps/{app_id}/keys/rotate")
async def rotate_keys(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep, runtime: RuntimeDep
) -> HTMLResponse:
    service.require_admin(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    keys = await apps_service.rotate_app_keys(session, app=app, cache=runtime.key_cache)
    return await render(request, session, viewer, "settings.html", app=app, new_keys=keys)


@router.post("/apps/{app_id}/rest-key/rotate")
async def rotate_rest_key(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep, runtime: RuntimeDep
) -> HTMLResponse:
    service.require_admin(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    rest_key = await apps_service.rotate_rest_key(
        session, company_id=viewer.company_id, cache=runtime.key_cache
    )
    return await render(request, session, viewer, "settings.html", app=app, new_rest_key=rest_key)


@router.post("/apps/{app_id}/credentials")
async def set_credentials(
    request: Request, app_id: DbInt, viewer: ViewerDep, session: SessionDep, runtime: RuntimeDep
) -> HTMLResponse:
    """The platform's credentials: an APNs .p8 key, an FCM service account or a VAPID key."""
    service.require_admin(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    form = await request.form()
    # An empty field is a field not given ("empty keeps the current VAPID key").
    fields = {k: v for k, v in form.items() if isinstance(v, str) and v and k != "csrf_token"}
    try:
        if app.platform == "ios":
            apps_service.set_apns_credentials(
                app, validated(ApnsCredentialsIn, fields), runtime.box
            )
        elif app.platform == "android":
            account = _json_object(fields.get("service_account", ""), "service_account")
            apps_service.set_fcm_credentials(
                app, validated(FcmCredentialsIn, {"service_account": account}), runtime.box
            )
        else:
            apps_service.set_webpush_credentials(
                app, validated(WebPushCredentialsIn, fields), runtime.box
            )
    except ClarionError as exc:
        await session.rollback()  # a refused change leaves nothing behind
        return await render(
            request,
            session,
            viewer,
            "settings.html",
            app=app,
            status=exc.status,
            credentials_error=exc.message,
        )
    return await render(
        request, session, viewer, "settings.html", app=app, notice="Credentials saved."
    )


@router.post("/apps/{app_id}/allowed-origins")
async def set_allowed_origins(
    request: Request,
    app_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    allowed_origins: Annotated[str, Form(max_length=MAX_ALLOWED_ORIGINS * MAX_ORIGIN_LENGTH)] = "",
) -> HTMLResponse:
    """The web pages that may call the SDK API with the app's key: one origin a line."""
    service.require_admin(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    lines = [line.strip() for line in allowed_origins.splitlines() if line.strip()]
    try:
        origins = validated(AllowedOriginsIn, {"allowed_origins": lines})
        apps_service.set_allowed_origins(app, origins.allowed_origins, runtime.key_cache)
    except ClarionError as exc:
        # The lines as typed stay in the form, to be corrected.
        shown = {"origins_error": exc.message, "origins_form": "\n".join(lines)}
        return await render(
            request, session, viewer, "settings.html", app=app, status=exc.status, **shown
        )
    notice = "Allowed origins saved."
    return await render(request, session, viewer, "settings.html", app=app, notice=notice)


# A line of the labels field: the code (up to 128 characters, spaces allowed), the pushes and the
# hours; 160 characters a line is room to spare.
_CAP_LINE = 160


@router.post("/apps/{app_id}/push-caps")
async def set_push_caps(
    request: Request,
    app_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    automations_max: Annotated[str, Form(max_length=20)] = "",
    automations_hours: Annotated[str, Form(max_length=20)] = "",
    labels: Annotated[str, Form(max_length=MAX_CAPPED_LABELS * _CAP_LINE)] = "",
) -> HTMLResponse:
    """The app's push caps: across automations (two numbers, both empty for none) and per
    label (one `code max hours` a line), checked by the admin API's schema and service."""
    service.require_admin(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    try:
        caps = validated(PushCapsIn, _push_caps_form(automations_max, automations_hours, labels))
        capping_service.set_push_caps(app, caps)
    except ClarionError as exc:
        # What was typed stays in the form, to be corrected.
        typed = {"max": automations_max, "hours": automations_hours, "labels": labels}
        shown = {"caps_error": exc.message, "caps_form": typed}
        return await render(
            request, session, viewer, "settings.html", app=app, status=exc.status, **shown
        )
    notice = "Push caps saved."
    return await render(request, session, viewer, "settings.html", app=app, notice=notice)


def _push_caps_form(most: str, hours: str, labels: str) -> dict[str, Any]:
    """The form as the admin API's body; numbers stay text for the schema to check."""
    document: dict[str, Any] = {"labels": {}}
    if most.strip() or hours.strip():
        document["automations"] = {"max": most.strip(), "hours": hours.strip()}
    for number, line in enumerate(labels.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 2)
        if len(parts) != 3:
            raise MalformedParameterError(
                f"labels: line {number}: write the label's code, the most pushes and the "
                "period in hours, e.g. promo 1 24"
            )
        code, most_of_label, hours_of_label = parts
        if code in document["labels"]:
            raise MalformedParameterError(f"labels: line {number}: {code} is capped twice")
        document["labels"][code] = {"max": most_of_label, "hours": hours_of_label}
    return document


@router.post("/apps/{app_id}/test-push")
async def try_credentials(
    request: Request,
    app_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    runtime: RuntimeDep,
    install_id: Annotated[Text, Form(max_length=128)] = "",
    push_token: Annotated[Text, Form(max_length=1024)] = "",
    title: Annotated[Text, Form(max_length=256)] = "",
    body: Annotated[Text, Form(max_length=4096)] = "",
) -> HTMLResponse:
    """Send one push with the stored credentials and show the provider's answer."""
    service.require_admin(viewer)
    app, _ = await service.company_app(session, viewer, app_id)
    try:
        async with runtime.provider_pool() as pool:
            result = await send_test_push(
                session,
                pool,
                app=app,
                install_id=install_id.strip(),
                push_token=push_token.strip(),
                title=title or "Clarion test",
                body=body or "Your push credentials work.",
            )
    except ClarionError as exc:
        return await render(
            request,
            session,
            viewer,
            "settings.html",
            app=app,
            status=exc.status,
            test_error=exc.message,
        )
    return await render(request, session, viewer, "settings.html", app=app, test_result=result)


def _json_object(text: str, field: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise MalformedParameterError(f"{field}: not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedParameterError(f"{field}: must be a JSON object")
    return value


async def _team_page(
    request: Request, session: AsyncSession, viewer: Viewer, **context: Any
) -> HTMLResponse:
    users = await service.list_users(session, company_id=viewer.company_id)
    return await render(
        request, session, viewer, "team.html", users=users, roles=list(Role), **context
    )


@router.get("/team")
async def team_page(request: Request, viewer: ViewerDep, session: SessionDep) -> HTMLResponse:
    service.require_admin(viewer)
    return await _team_page(request, session, viewer)


@router.post("/team")
async def add_user(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    email: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "viewer",
) -> HTMLResponse:
    service.require_admin(viewer)
    fields = {"email": email, "name": name, "password": password, "role": role}
    try:
        await service.create_user(
            session,
            company_id=viewer.company_id,
            user_in=validated(UserCreate, fields),
            now=utcnow(),
        )
    except ClarionError as exc:
        await session.rollback()  # a refused change leaves nothing behind
        return await _team_page(
            request, session, viewer, error=exc.message, form=fields, status=exc.status
        )
    return await _team_page(request, session, viewer, notice=f"{email.lower()} can now sign in.")


@router.post("/team/{user_id}")
async def change_user(
    request: Request,
    user_id: DbInt,
    viewer: ViewerDep,
    session: SessionDep,
    role: Annotated[str, Form()] = "",
    status: Annotated[str, Form()] = "",
) -> HTMLResponse:
    service.require_admin(viewer)  # before the form: a viewer learns nothing from its errors
    change = validated(UserChange, {"role": role, "status": status})
    user = await service.change_user(
        session,
        viewer,
        user_id=user_id,
        role=change.role,
        disabled=change.status == "disabled",
    )
    state = "can no longer sign in" if user.disabled else f"is now {user.role}"
    return await _team_page(request, session, viewer, notice=f"{user.email} {state}.")


router.include_router(campaign_pages.router)
router.include_router(automation_pages.router)
router.include_router(inapp_pages.router)
router.include_router(audience_pages.router)
router.include_router(people_pages.router)

# Last: any other /dashboard path is a page that does not exist (HTML, not the API's JSON).
_unknown = APIRouter(route_class=PageRoute)


@_unknown.api_route("/{path:path}", methods=["GET", "POST"])
async def unknown_page(path: str) -> Response:
    raise NotFoundError(f"no page /dashboard/{path}")


router.include_router(_unknown)
