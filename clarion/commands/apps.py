"""`clarion apps`: create and list apps."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from clarion.apps.schemas import AppCreate
from clarion.commands.common import PlatformChoice, load_settings

apps_cli = typer.Typer(help="Apps and their keys.")


@apps_cli.command("create")
def apps_create(
    name: Annotated[str, typer.Option(help="The app's name.")],
    platform: Annotated[PlatformChoice, typer.Option(help="ios, android or web.")],
    company_name: Annotated[
        str, typer.Option(help="Name of the company if one is created.")
    ] = "Default",
) -> None:
    """Create an app; prints it with its keys (shown this once) as JSON."""
    from clarion.apps import service
    from clarion.migrate import migrate as run_migrations
    from clarion.runtime import Runtime

    settings = load_settings()
    if settings.is_sqlite:
        run_migrations(settings)

    async def main() -> str:
        runtime = Runtime(settings)
        try:
            async with runtime.sessions() as session, session.begin():
                rest_key = None
                company = await service.get_sole_company(session)
                if company is None:
                    company, rest_key = await service.create_company(session, name=company_name)
                app, keys = await service.create_app(
                    session,
                    company_id=company.id,
                    app_in=AppCreate(name=name, platform=platform.value),
                    box=runtime.box,
                )
                return service.describe_app(app, keys, rest_key).model_dump_json(indent=2)
        finally:
            await runtime.engine.dispose()

    typer.echo(asyncio.run(main()))


@apps_cli.command("list")
def apps_list() -> None:
    """List every app (keys are never shown again)."""
    from sqlalchemy import select

    from clarion.apps.models import App
    from clarion.apps.service import describe_app
    from clarion.runtime import Runtime

    async def main() -> list[str]:
        runtime = Runtime(load_settings())
        try:
            async with runtime.sessions() as session:
                apps = await session.scalars(select(App).order_by(App.id))
                return [describe_app(a).model_dump_json() for a in apps]
        finally:
            await runtime.engine.dispose()

    for line in asyncio.run(main()):
        typer.echo(line)
