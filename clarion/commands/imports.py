"""`clarion imports`: flat-file import sources, their runs, a poll on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clarion.commands.common import AppId, Database, with_database

imports_cli = typer.Typer(help="Flat-file audience imports (docs/imports.md).")


SourceName = Annotated[str, typer.Option("--name", help="The import source's name.")]


@imports_cli.command("create")
def imports_create(
    app_id: AppId,
    name: SourceName,
    url: Annotated[str, typer.Option(help="s3://, sftp://, ftp://, ftps://, https:// or file://")],
    id_type: Annotated[
        str, typer.Option(help="custom_ids, advertising_ids or install_ids.")
    ] = "custom_ids",
    audience_name: Annotated[str | None, typer.Option(help="A fixed audience name.")] = None,
    audience_pattern: Annotated[
        str | None, typer.Option(help="A regex over the file name; group 'name' names it.")
    ] = None,
    pattern: Annotated[str, typer.Option(help="Which files of the folder (a glob).")] = "*",
    header: Annotated[bool, typer.Option(help="The first line names the columns.")] = True,
    delimiter: Annotated[str, typer.Option(help="',', ';', '|' or 'tab'.")] = ",",
    id_column: Annotated[str, typer.Option(help="Header name or 1-based position.")] = "1",
    on_change: Annotated[str, typer.Option(help="replace or apply_changes.")] = "replace",
    delete_after: Annotated[bool, typer.Option(help="Delete a file once ingested.")] = False,
    poll_interval: Annotated[int, typer.Option(help="Seconds between polls.")] = 3600,
    username: Annotated[str | None, typer.Option()] = None,
    password: Annotated[str | None, typer.Option(envvar="CLARION_IMPORT_PASSWORD")] = None,
    access_key: Annotated[str | None, typer.Option()] = None,
    secret_key: Annotated[str | None, typer.Option(envvar="CLARION_IMPORT_SECRET_KEY")] = None,
    region: Annotated[str | None, typer.Option()] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint.")] = None,
    private_key_file: Annotated[Path | None, typer.Option(help="SSH private key.")] = None,
    host_key: Annotated[str | None, typer.Option(help="The SFTP server's key, pinned.")] = None,
) -> None:
    """Create an import source; prints it as JSON (credentials are never shown)."""
    from pydantic import ValidationError

    from clarion.db import utcnow
    from clarion.imports import service
    from clarion.imports.schemas import CredentialsIn, ImportSourceIn
    from clarion.outbound import OutboundPolicy

    try:
        credentials = CredentialsIn(
            username=username,
            password=password,
            access_key=access_key,
            secret_key=secret_key,
            region=region,
            endpoint_url=endpoint_url,
            private_key=private_key_file.read_text() if private_key_file else None,
            host_key=host_key,
        )
        body = ImportSourceIn.model_validate(
            {
                "name": name,
                "url": url,
                "credentials": credentials,
                "id_type": id_type,
                "audience_name": audience_name,
                "audience_pattern": audience_pattern,
                "pattern": pattern,
                "header": header,
                "delimiter": "\t" if delimiter == "tab" else delimiter,
                "id_column": id_column,
                "on_change": on_change,
                "delete_after": delete_after,
                "poll_interval_seconds": poll_interval,
            }
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def create(db: Database) -> str:
        async with db.sessions() as session, session.begin():
            source = await service.create_source(
                session,
                app_id=app_id,
                body=body,
                box=db.box,
                outbound=OutboundPolicy.from_settings(db.settings),
                now=utcnow(),
            )
            return service.read_source(source).model_dump_json(indent=2)

    typer.echo(with_database(create))


@imports_cli.command("list")
def imports_list(
    app_id: Annotated[int | None, typer.Option(help="Only this app's sources.")] = None,
) -> None:
    """List import sources, one JSON line each."""
    from clarion.imports import service

    async def listed(db: Database) -> list[str]:
        async with db.sessions() as session:
            sources = await service.list_sources(session, app_id=app_id)
            return [source.model_dump_json() for source in sources]

    for line in with_database(listed):
        typer.echo(line)


@imports_cli.command("run")
def imports_run(app_id: AppId, name: SourceName) -> None:
    """Poll a source now, with a progress bar per file; prints each run as a JSON line."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn

    from clarion.imports.service import read_run
    from clarion.imports.tasks import ImportRunner

    async def run(db: Database) -> list[str]:
        runner = ImportRunner(db.sessions, db.settings, db.box)
        tasks: dict[str, TaskID] = {}
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, transient=False) as progress:

            def advance(file: str, count: int, size: int | None) -> None:
                if file not in tasks:
                    tasks[file] = progress.add_task(file, total=size)
                progress.advance(tasks[file], count)

            runs = await runner.run_source(app_id=app_id, name=name, on_progress=advance)
        return [read_run(run).model_dump_json() for run in runs]

    lines = with_database(run)
    for line in lines:
        typer.echo(line)
    if not lines:
        typer.echo("nothing new to ingest (or another process is polling this source)", err=True)


@imports_cli.command("runs")
def imports_runs(
    app_id: AppId,
    name: SourceName,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """A source's run history, newest first, one JSON line each."""
    from clarion.imports import service

    async def history(db: Database) -> list[str]:
        async with db.sessions() as session:
            runs = await service.list_runs(session, app_id=app_id, name=name, limit=limit)
            return [run.model_dump_json() for run in runs]

    for line in with_database(history):
        typer.echo(line)
