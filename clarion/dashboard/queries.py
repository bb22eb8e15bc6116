"""Read queries of the dashboard's pages that the services do not offer: pages of an
app's import sources and export destinations with each one's last run, a page of one source's
or destination's runs, the audiences a file is being imported into right now, and the
triggers of a page of in-app campaigns or automations.

Each answers a whole page in one or two queries, never one per row. Rows are read with the
services' own readers (read_source, read_run, read_destination), so what they hide (the
stored credentials) stays hidden here too. No HTTP here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from clarion.campaigns.models import Campaign
from clarion.exports import service as exports
from clarion.exports.models import ExportDestination, ExportRun
from clarion.exports.schemas import DestinationRead, ExportRunRead
from clarion.imports import service as imports
from clarion.imports.models import ImportRun, ImportSource, RunStatus
from clarion.imports.schemas import ImportRunRead, ImportSourceRead
from clarion.inapp.models import InAppCampaign


async def importing_audiences(
    session: AsyncSession, *, app_id: int, names: Collection[str]
) -> set[str]:
    """The audiences among `names` that an import source is reading a file into now."""
    if not names:
        return set()
    found = await session.scalars(
        select(ImportRun.audience_name)
        .join(ImportSource, ImportSource.id == ImportRun.source_id)
        .where(
            ImportSource.app_id == app_id,
            ImportRun.status == RunStatus.RUNNING.value,
            ImportRun.audience_name.in_(list(names)),
        )
        .distinct()
    )
    return {name for name in found if name is not None}


async def sources_with_last_run(
    session: AsyncSession, *, app_id: int, offset: int, limit: int
) -> list[tuple[ImportSourceRead, ImportRunRead | None]]:
    """A page of the app's import sources by name, each with its latest run (two queries)."""
    last_run = (
        select(ImportRun.id)
        .where(ImportRun.source_id == ImportSource.id)
        .order_by(ImportRun.started_at.desc(), ImportRun.id.desc())
        .limit(1)
        .correlate(ImportSource)
        .scalar_subquery()
    )
    rows = (
        await session.execute(
            select(ImportSource, last_run.label("last_run_id"))
            .where(ImportSource.app_id == app_id)
            .order_by(ImportSource.name)
            .offset(offset)
            .limit(limit)
        )
    ).all()
    run_ids = [run_id for _, run_id in rows if run_id is not None]
    runs: dict[int, ImportRun] = {}
    if run_ids:
        found = await session.scalars(select(ImportRun).where(ImportRun.id.in_(run_ids)))
        runs = {run.id: run for run in found}
    return [
        (
            imports.read_source(source),
            imports.read_run(runs[run_id]) if run_id in runs else None,
        )
        for source, run_id in rows
    ]


async def source_runs(
    session: AsyncSession, *, app_id: int, name: str, offset: int, limit: int
) -> list[ImportRunRead]:
    """A page of one source's runs, newest first (as imports.service.list_runs)."""
    runs = await session.scalars(
        select(ImportRun)
        .join(ImportSource, ImportSource.id == ImportRun.source_id)
        .where(ImportSource.app_id == app_id, ImportSource.name == name)
        .order_by(ImportRun.started_at.desc(), ImportRun.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [imports.read_run(run) for run in runs]


async def destinations_with_last_run(
    session: AsyncSession, *, app_id: int, offset: int, limit: int
) -> list[tuple[DestinationRead, ExportRunRead | None]]:
    """A page of the app's export destinations by name, each with its latest day's run (two
    queries)."""
    last_run = (
        select(ExportRun.id)
        .where(ExportRun.destination_id == ExportDestination.id)
        .order_by(ExportRun.day.desc())
        .limit(1)
        .correlate(ExportDestination)
        .scalar_subquery()
    )
    rows = (
        await session.execute(
            select(ExportDestination, last_run.label("last_run_id"))
            .where(ExportDestination.app_id == app_id)
            .order_by(ExportDestination.name)
            .offset(offset)
            .limit(limit)
        )
    ).all()
    run_ids = [run_id for _, run_id in rows if run_id is not None]
    days: dict[int, ExportRun] = {}
    if run_ids:
        found = await session.scalars(select(ExportRun).where(ExportRun.id.in_(run_ids)))
        days = {run.id: run for run in found}
    return [
        (
            exports.read_destination(destination),
            exports.read_run(days[run_id]) if run_id in days else None,
        )
        for destination, run_id in rows
    ]


async def destination_runs(
    session: AsyncSession, *, app_id: int, name: str, offset: int, limit: int
) -> list[ExportRunRead]:
    """A page of one destination's days, newest first (as exports.service.list_runs)."""
    runs = await session.scalars(
        select(ExportRun)
        .join(ExportDestination, ExportDestination.id == ExportRun.destination_id)
        .where(ExportDestination.app_id == app_id, ExportDestination.name == name)
        .order_by(ExportRun.day.desc())
        .offset(offset)
        .limit(limit)
    )
    return [exports.read_run(run) for run in runs]


async def triggers(
    session: AsyncSession,
    *,
    model: type[InAppCampaign] | type[Campaign],
    app_id: int,
    tokens: Collection[str],
) -> dict[str, dict[str, Any]]:
    """The trigger of each of these in-app campaigns or automations (the lists' summaries do not
    carry it), in one query for the page."""
    if not tokens:
        return {}
    rows = await session.execute(
        select(model.token, model.body).where(model.app_id == app_id, model.token.in_(list(tokens)))
    )
    return {token: body.get("trigger") or {} for token, body in rows}
