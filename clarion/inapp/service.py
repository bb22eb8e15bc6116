"""In-app campaigns and themes: create, update, read, list, delete, statistics. No HTTP here.

What an installation is handed is decided in clarion.inapp.eligibility; this module owns the
campaigns and themes themselves, and bumps the app's revision (models.InAppRevision) in the
transaction of every change so that API processes reload what they hold.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.db import insert_ignoring_conflicts
from clarion.errors import MalformedParameterError
from clarion.inapp.models import InAppRevision, InAppTheme
from clarion.inapp.schemas import ThemeBody, ThemeRead

# Every app has it, without storing it: a campaign can be written before any theme is.
BUILT_IN_THEME = ThemeRead(code="default", name="Default (modal)", built_in=True)


async def bump_revision(session: AsyncSession, *, app_id: int) -> None:
    """Mark the app's in-app campaigns or themes as changed (call in the changing transaction)."""
    await session.execute(
        insert_ignoring_conflicts(session, InAppRevision, index=["app_id"]).values(
            app_id=app_id, revision=0
        )
    )
    await session.execute(
        update(InAppRevision)
        .where(InAppRevision.app_id == app_id)
        .values(revision=InAppRevision.revision + 1)
    )


async def current_revisions(session: AsyncSession) -> dict[int, int]:
    """Every app's revision (apps that never had an in-app change have none)."""
    rows = await session.execute(select(InAppRevision.app_id, InAppRevision.revision))
    return dict(rows.all())  # (a Result has keys(): dict() would take it for a mapping)


async def themes(session: AsyncSession, *, app_id: int) -> dict[str, ThemeRead]:
    """The app's themes by code, the built-in `default` first (a stored theme of the same code
    cannot exist: the admin API refuses it)."""
    found = {BUILT_IN_THEME.code: BUILT_IN_THEME}
    rows = await session.scalars(
        select(InAppTheme).where(InAppTheme.app_id == app_id).order_by(InAppTheme.code)
    )
    for theme in rows:
        found[theme.code] = ThemeRead(
            code=theme.code, **ThemeBody.model_validate(theme.body).model_dump()
        )
    return found


async def check_theme(session: AsyncSession, *, app_id: int, code: str, field: str) -> None:
    """Raise MalformedParameterError (400) naming `field` if the app has no theme `code`."""
    if code == BUILT_IN_THEME.code:
        return
    found = await session.scalar(
        select(InAppTheme.id).where(InAppTheme.app_id == app_id, InAppTheme.code == code)
    )
    if found is None:
        raise MalformedParameterError(f"{field}: this app has no in-app theme {code!r}")
