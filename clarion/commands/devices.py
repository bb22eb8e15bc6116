"""`clarion devices`: simulated installations for tests, demos and benchmarks."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from clarion.commands.common import load_settings

devices_cli = typer.Typer(help="Installations (test and demo data).")


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
        runtime = Runtime(load_settings())
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
