"""`clarion exports`: daily export destinations, their runs, days produced on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clarion.commands.common import AppId, Database, with_database

exports_cli = typer.Typer(help="Daily flat-file exports (docs/exports.md).")


@exports_cli.command("create")
def exports_create(
    app_id: AppId,
    name: DestinationName,
    kind: Annotated[str, typer.Option(help="push_events, inapp_events or optin_users.")],
    url: Annotated[str, typer.Option(help="s3://, gs://, sftp://, ftp://, ftps:// or file://")],
    file_name: Annotated[
        str, typer.Option(help="Pattern: {app_id} {kind} {date} {destination}.")
    ] = "clarion_{app_id}_{kind}_{date}.csv",
    gzip: Annotated[bool, typer.Option(help="Compress (the name gets .gz).")] = False,
    id_columns: Annotated[
        str, typer.Option(help="Comma-separated: install_id,custom_id,advertising_id.")
    ] = "install_id,custom_id,advertising_id",
    delay_minutes: Annotated[int, typer.Option(help="After the day's end.")] = 120,
    username: Annotated[str | None, typer.Option()] = None,
    password: Annotated[str | None, typer.Option(envvar="CLARION_EXPORT_PASSWORD")] = None,
    access_key: Annotated[str | None, typer.Option()] = None,
    secret_key: Annotated[str | None, typer.Option(envvar="CLARION_EXPORT_SECRET_KEY")] = None,
    region: Annotated[str | None, typer.Option()] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3/GCS-compatible endpoint.")] = None,
    service_account_file: Annotated[Path | None, typer.Option(help="GCS JSON key.")] = None,
    host_key: Annotated[str | None, typer.Option(help="The SFTP server's key, pinned.")] = None,
) -> None:
    """Create an export destination; prints it as JSON (credentials are never shown)."""
    from pydantic import ValidationError

    from clarion.db import utcnow
    from clarion.exports import service
    from clarion.exports.schemas import DestinationIn
    from clarion.imports.schemas import CredentialsIn
    from clarion.outbound import OutboundPolicy

    try:
        body = DestinationIn.model_validate(
            {
                "name": name,
                "kind": kind,
                "url": url,
                "credentials": CredentialsIn(
                    username=username,
                    password=password,
                    access_key=access_key,
                    secret_key=secret_key,
                    region=region,
                    endpoint_url=endpoint_url,
                    service_account=(
                        service_account_file.read_text() if service_account_file else None
                    ),
                    host_key=host_key,
                ),
                "file_name": file_name,
                "gzip": gzip,
                "id_columns": [c.strip() for c in id_columns.split(",") if c.strip()],
                "delay_minutes": delay_minutes,
            }
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def create(db: Database) -> str:
        async with db.sessions() as session, session.begin():
            destination = await service.create_destination(
                session,
                app_id=app_id,
                body=body,
                box=db.box,
                outbound=OutboundPolicy.from_settings(db.settings),
                now=utcnow(),
            )
            return service.read_destination(destination).model_dump_json(indent=2)

    typer.echo(with_database(create))


@exports_cli.command("list")
def exports_list(
    app_id: Annotated[int | None, typer.Option(help="Only this app's destinations.")] = None,
) -> None:
    """List export destinations, one JSON line each."""
    from clarion.exports import service

    async def listed(db: Database) -> list[str]:
        async with db.sessions() as session:
            destinations = await service.list_destinations(session, app_id=app_id)
            return [destination.model_dump_json() for destination in destinations]

    for line in with_database(listed):
        typer.echo(line)


@exports_cli.command("run")
def exports_run(
    app_id: AppId,
    name: DestinationName,
    day: Annotated[
        list[str] | None, typer.Option(help="A UTC day (YYYY-MM-DD) to produce again; repeatable.")
    ] = None,
    from_day: Annotated[str | None, typer.Option("--from", help="First day of a range.")] = None,
    to_day: Annotated[str | None, typer.Option("--to", help="Last day of a range.")] = None,
) -> None:
    """Produce days of a destination now, with a progress bar: the days given (again, even if
    produced), or else every due day not produced yet (backfill). Prints each run."""
    from datetime import timedelta

    from rich.progress import Progress

    from clarion.errors import MalformedParameterError
    from clarion.exports.service import parse_day, pending_days, read_run
    from clarion.exports.tasks import ExportRunner

    async def run(db: Database) -> list[str]:
        runner = ExportRunner(db.sessions, db.settings, db.box)
        days = [parse_day(value) for value in day or []]
        if from_day or to_day:
            if not (from_day and to_day):
                raise MalformedParameterError("give both --from and --to")
            first, last = parse_day(from_day), parse_day(to_day)
            if first > last:
                raise MalformedParameterError("--from is after --to")
            if (last - first).days > 366:
                raise MalformedParameterError("a range of at most a year")
            days += [first + timedelta(days=n) for n in range((last - first).days + 1)]
        if not days:
            async with db.sessions() as session:
                days = await pending_days(session, app_id=app_id, name=name)
        with Progress() as progress:
            task = progress.add_task(name, total=len(days))
            runs = await runner.run_days(
                app_id=app_id, name=name, days=days, on_progress=lambda _: progress.advance(task)
            )
        return [read_run(run).model_dump_json() for run in runs]

    for line in with_database(run):
        typer.echo(line)


@exports_cli.command("runs")
def exports_runs(
    app_id: AppId,
    name: DestinationName,
    limit: Annotated[int, typer.Option(help="How many days, newest first.")] = 31,
) -> None:
    """A destination's days, newest first, one JSON line each."""
    from clarion.exports import service

    async def history(db: Database) -> list[str]:
        async with db.sessions() as session:
            runs = await service.list_runs(session, app_id=app_id, name=name, limit=limit)
            return [run.model_dump_json() for run in runs]

    for line in with_database(history):
        typer.echo(line)


DestinationName = Annotated[str, typer.Option("--name", help="The destination's name.")]
