"""The `clarion` command: serve, worker, migrate, sim, dev; its command groups (apps, devices,
imports, exports, users) are in clarion/commands/, one module each."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from clarion.commands.apps import apps_cli
from clarion.commands.common import load_settings
from clarion.commands.devices import devices_cli
from clarion.commands.exports import exports_cli
from clarion.commands.imports import imports_cli
from clarion.commands.users import users_cli
from clarion.logs import configure as configure_logging

cli = typer.Typer(help="Clarion: self-hosted mobile engagement, Batch API 1.x compatible.")
cli.add_typer(apps_cli, name="apps")
cli.add_typer(devices_cli, name="devices")
cli.add_typer(imports_cli, name="imports")
cli.add_typer(exports_cli, name="exports")
cli.add_typer(users_cli, name="users")


@cli.command()
def migrate() -> None:
    """Apply pending database migrations (CLARION_DATABASE_URL)."""
    from clarion.migrate import migrate as run_migrations

    settings = load_settings()
    configure_logging(settings)
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
    from clarion.runtime import tune_garbage_collector

    settings = load_settings()
    configure_logging(settings)
    if settings.is_sqlite:
        run_migrations(settings)  # the embedded default needs no separate step
    with_workers = settings.is_sqlite if workers is None else workers
    app = create_app(settings, workers=with_workers)
    tune_garbage_collector()
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)


@cli.command()
def worker() -> None:
    """Run delivery workers, the campaign scheduler and GDPR processing (scaled out)."""
    from clarion.monitoring import start_metrics
    from clarion.runtime import Runtime, tune_garbage_collector

    settings = load_settings()
    configure_logging(settings)
    tune_garbage_collector()

    async def main() -> None:
        runtime = Runtime(settings)
        # Before the start: the batches the outbox sweep finds are delivered at once, counted.
        metrics = await start_metrics(settings, runtime.engine, runtime.sessions)
        await runtime.start(workers=True, http=False)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        typer.echo(f"worker running on {settings.resolved_queue.value} queue; Ctrl-C stops")
        await stop.wait()
        # Stopping lets the requests on the wire be answered, records them and hands the rest
        # back (up to worker_stop_seconds); a second signal ends the process at once (its
        # leases expire and other workers take its batches over, decision 0032).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        typer.echo("worker stopping: finishing the requests on the wire, handing back the rest")
        await runtime.stop()
        await metrics.stop()

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
    # uvicorn stops on SIGTERM, then raises it again once its own handler is gone: without a
    # handler of ours that kills the process before `finally` stops the simulators.
    signal.signal(signal.SIGTERM, _exit_on_signal)
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
        # The simulators hand out Web Push endpoints and an FCM token_uri on this host, which
        # the outbound policy refuses (a loopback address) unless the operator allows it.
        os.environ.setdefault("CLARION_OUTBOUND_ALLOW", host)
        settings = load_settings()
        configure_logging(settings)
        from clarion.migrate import migrate as run_migrations

        run_migrations(settings)
        demo = asyncio.run(
            provision_demo(settings, sim_url=sim_url, api_url=f"http://{host}:{port}")
        )
        typer.echo(demo)
        from clarion.app import create_app
        from clarion.demo import demo_web_key
        from clarion.demo_page import demo_page_router
        from clarion.runtime import tune_garbage_collector

        app = create_app(settings, workers=True)
        web_key = demo_web_key(settings)
        app.include_router(demo_page_router(web_key=web_key, server=f"http://{host}:{port}"))
        tune_garbage_collector()
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    finally:
        os.killpg(sim_proc.pid, signal.SIGTERM)
        sim_proc.wait(timeout=10)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
