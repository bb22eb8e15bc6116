"""The dashboard's web plumbing: templates, the signed-in viewer, CSRF checks, errors as pages.

Pages are rendered on the server (Jinja2); `static/app.js` adds the little that needs a script
(the live audience estimate, copy buttons, drag-and-drop upload, live progress). Every change is
a POST carrying the session's CSRF token, in a form field or the X-CSRF-Token header.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.apps.models import App
from clarion.apps.service import list_company_apps
from clarion.dashboard import service
from clarion.dashboard.service import Viewer
from clarion.db import utcnow
from clarion.errors import ApiMisuseError, ClarionError, from_validation_errors
from clarion.formats import Text, wire_date
from clarion.http import SessionDep, validation_error

M = TypeVar("M", bound=BaseModel)

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TEMPLATES.env.filters["wire_date"] = wire_date
TEMPLATES.env.filters["thousands"] = lambda number: f"{number:,}"
STATIC_DIR = Path(__file__).parent / "static"
SESSION_COOKIE = "clarion_session"

# Scripts and styles come from /dashboard/static only: an injected <script> does not run.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: https:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """Raised by `signed_in`; PageRoute turns it into a redirect to the sign-in page."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class PageRoute(APIRoute):
    """A dashboard route: errors become an HTML page rather than Batch's JSON, and every
    response carries the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired as exc:
                response = RedirectResponse(f"/dashboard/login?next={quote(exc.path)}", 303)
            except ClarionError as exc:
                response = error_page(request, exc)
            except RequestValidationError as exc:
                response = error_page(request, validation_error(exc))
            response.headers.update(_SECURITY_HEADERS)
            return response

        return page


async def signed_in(request: Request, session: SessionDep) -> Viewer:
    viewer = await service.viewer_of(
        session, token=request.cookies.get(SESSION_COOKIE), now=utcnow()
    )
    if viewer is None:
        # Back to the page after signing in; a POST cannot be replayed, so its page is home.
        raise SignInRequired(request.url.path if request.method == "GET" else "/dashboard/")
    if request.method not in ("GET", "HEAD"):
        sent = request.headers.get("x-csrf-token")
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            field = (await request.form()).get("csrf_token")
            sent = field if isinstance(field, str) else None
        if not service.csrf_matches(viewer, sent):
            raise ApiMisuseError(
                "this form expired or was sent from another site: reload the page and try again"
            )
    return viewer


ViewerDep = Annotated[Viewer, Depends(signed_in)]


def secure_cookies(request: Request) -> bool:
    configured: bool | None = request.app.state.runtime.settings.dashboard_secure_cookies
    return request.url.scheme == "https" if configured is None else configured


async def render(
    request: Request,
    session: AsyncSession,
    viewer: Viewer,
    template: str,
    *,
    app: App | None = None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A full page: the navigation needs the company's apps (one query)."""
    apps = await list_company_apps(session, company_id=viewer.company_id)
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {"viewer": viewer, "apps": apps, "app": app, **context},
        status_code=status,
    )


def fragment(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A piece of a page that a script asks for (no layout)."""
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status)


def error_page(request: Request, error: ClarionError) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request,
        "error.html",
        {"failure": error, "viewer": None, "apps": []},
        status_code=error.status,
    )


PAGE_SIZE = 25  # rows of every paginated list
PageNumber = Annotated[int, Query(ge=1, le=10_000)]
# A campaign's or automation's token in a page's path, and the notice a redirect names.
CampaignToken = Annotated[Text, PathParam(max_length=64)]
Notice = Annotated[Text, Query(max_length=32)]


def page_window(page: int) -> dict[str, int]:
    """The offset and limit of a page (numbered from 1), asking one row more than is shown:
    that row says whether a next page exists, without counting the whole list."""
    return {"offset": (page - 1) * PAGE_SIZE, "limit": PAGE_SIZE + 1}


def paged(name: str, rows: Sequence[Any], page: int) -> dict[str, Any]:
    """A page's rows under `name`, with `page` and `has_next`, for the template."""
    return {name: rows[:PAGE_SIZE], "page": page, "has_next": len(rows) > PAGE_SIZE}


def validated(model: type[M], data: Any, *, location: tuple[str, ...] = ()) -> M:
    """A form or query read with the API's schema: the same rules, the same 400/31 messages
    (`location` prefixes the field paths, e.g. ("query",))."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": (*location, *error["loc"])} for error in exc.errors()]
        raise from_validation_errors(errors) from None


def redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)
