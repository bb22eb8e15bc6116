"""`clarion users`: dashboard accounts."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated

import typer

from clarion.commands.common import Database, load_settings, with_database

users_cli = typer.Typer(help="Dashboard accounts (docs/dashboard.md).")


class RoleChoice(StrEnum):
    admin = "admin"
    editor = "editor"
    viewer = "viewer"


@users_cli.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The sign-in e-mail.")],
    role: Annotated[RoleChoice, typer.Option(help="admin, editor or viewer.")] = RoleChoice.admin,
    name: Annotated[str, typer.Option(help="The person's name.")] = "",
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password from standard input (scripts).")
    ] = False,
    company_id: Annotated[
        int | None, typer.Option(help="The company, when the database holds several.")
    ] = None,
    company_name: Annotated[
        str, typer.Option(help="Name of the company if one is created.")
    ] = "Default",
) -> None:
    """Create a dashboard account (the first admin, typically). With no company yet, one is
    created and its REST API key printed, this once."""
    from clarion.apps import service as apps_service
    from clarion.dashboard import service
    from clarion.dashboard.schemas import UserCreate
    from clarion.db import transaction, utcnow
    from clarion.errors import MissingParameterError
    from clarion.migrate import migrate as run_migrations

    settings = load_settings()
    if settings.is_sqlite:
        run_migrations(settings)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user_in = UserCreate.model_validate(
            {"email": email, "name": name, "password": password, "role": role.value}
        )
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None

    async def create(db: Database) -> str:
        async with transaction(db.sessions) as session:
            rest_key = None
            chosen = company_id
            if chosen is None:
                company = await apps_service.get_sole_company(session)
                if company is None:
                    if await apps_service.any_company(session):
                        raise MissingParameterError("several companies: pass --company-id")
                    company, rest_key = await apps_service.create_company(
                        session, name=company_name
                    )
                chosen = company.id
            user = await service.create_user(
                session, company_id=chosen, user_in=user_in, now=utcnow()
            )
            created = {"id": user.id, "email": user.email, "role": user.role, "company_id": chosen}
            if rest_key is not None:
                created["rest_api_key"] = rest_key
            return json.dumps(created, indent=2)

    typer.echo(with_database(create))
