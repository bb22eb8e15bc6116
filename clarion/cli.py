"""The `clarion` command: serve, worker, migrate, sim, dev, apps, devices."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from clarion.apps.schemas import AppCreate
from clarion.config import Settings

cli = typer.Typer(help="Clarion: self-hosted mobile engagement, Batch API 1.x compatible.")
apps_cli = typer.Typer(help="Apps and their keys.")
devices_cli = typer.Typer(help="Installations (test and demo data).")
cli.add_typer(apps_cli, name="apps")
cli.add_typer(devices_cli, name="devices")


class PlatformChoice(StrEnum):
    ios = "ios"
    android = "android"
    web = "web"


def _settings() -> Settings:
    return Settings()


@cli.command()
def migrate() -> None:
    """Apply pending database migrations (CLARION_DATABASE_URL)."""
    from clarion.migrate import migrate as run_migrations

    settings = _settings()
    run_migrations(settings)
    typer.echo(f"database at {settings.resolved_database_url} is up to date")


@cli.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[
        bool | None,
        typer.Option(help="Run delivery workers in this process (default: yes on SQLite)."),
    ] = None,
) -> None:
    """Serve the HTTP API (and, on the embedded default, the workers and the scheduler)."""
    from clarion.app import create_app
    from clarion.migrate import migrate as run_migrations

    settings = _settings()
    if settings.is_sqlite:
        run_migrations(settings)  # the embedded default needs no separate step
    with_workers = settings.is_sqlite if workers is None else workers
    app = create_app(settings, workers=with_workers)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


@cli.command()
def worker() -> None:
    """Run delivery workers, the campaign scheduler and GDPR processing (scaled out)."""
    from clarion.runtime import Runtime

    settings = _settings()

    async def main() -> None:
        runtime = Runtime(settings)
        await runtime.start(workers=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        typer.echo(f"worker running on {settings.resolved_queue.value} queue; Ctrl-C stops")
        await stop.wait()
        await runtime.stop()

    asyncio.run(main())


@cli.command()
def sim(
    host: str = "127.0.0.1",
    port: int = 8443,
    state_dir: Path = Path("var/sim"),
) -> None:
    """Run the local APNs, FCM and Web Push simulators (HTTPS, HTTP/2)."""
    from clarion.sim.server import run

    run(host, port, state_dir)


@cli.command()
def dev(host: str = "127.0.0.1", port: int = 8000, sim_port: int = 8443) -> None:
    """What `make run` does: simulators + migrations + a demo app + API and workers on SQLite."""
    from clarion.demo import provision_demo, wait_for_port

    var = Path("var")
    sim_dir = var / "sim"
    sim_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clarion.sim",
            "--host",
            host,
            "--port",
            str(sim_port),
            "--state-dir",
            str(sim_dir),
        ],
        start_new_session=True,
    )
    try:
        wait_for_port(host, sim_port, timeout=20)
        sim_url = f"https://{host}:{sim_port}"
        os.environ.setdefault("CLARION_APNS_PRODUCTION_URL", sim_url)
        os.environ.setdefault("CLARION_APNS_SANDBOX_URL", sim_url)
        os.environ.setdefault("CLARION_FCM_URL", sim_url)
        os.environ.setdefault("CLARION_PROVIDER_CA_FILE", str(sim_dir / "ca.pem"))
        settings = _settings()
        from clarion.migrate import migrate as run_migrations

        run_migrations(settings)
        demo = asyncio.run(
            provision_demo(settings, sim_url=sim_url, api_url=f"http://{host}:{port}")
        )
        typer.echo(demo)
        serve(host=host, port=port, workers=True)
    finally:
        os.killpg(sim_proc.pid, signal.SIGTERM)
        sim_proc.wait(timeout=10)


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

    settings = _settings()
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
        runtime = Runtime(_settings())
        try:
            async with runtime.sessions() as session:
                apps = await session.scalars(select(App).order_by(App.id))
                return [describe_app(a).model_dump_json() for a in apps]
        finally:
            await runtime.engine.dispose()

    for line in asyncio.run(main()):
        typer.echo(line)


@devices_cli.command("seed")
def devices_seed(
    app_id: Annotated[int, typer.Option(help="The app to fill.")],
    count: Annotated[int, typer.Option(help="How many installations.")] = 1000,
    custom_id_prefix: Annotated[str, typer.Option(help="Custom ids are PREFIX-N.")] = "user",
) -> None:
    """Create COUNT opted-in installations with simulator-valid tokens (benchmarks, demos)."""
    from rich.progress import Progress

    from clarion.demo import seed_installations
    from clarion.runtime import Runtime

    async def main() -> None:
        runtime = Runtime(_settings())
        try:
            with Progress() as progress:
                task = progress.add_task("installations", total=count)
                await seed_installations(
                    runtime.sessions,
                    app_id=app_id,
                    count=count,
                    custom_id_prefix=custom_id_prefix,
                    on_progress=lambda n: progress.advance(task, n),
                )
        finally:
            await runtime.engine.dispose()

    asyncio.run(main())
    typer.echo(json.dumps({"app_id": app_id, "created": count}))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
