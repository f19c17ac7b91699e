"""``migrator sample-app serve``: the small application of one cell (demo, tests, router benchmark).

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import typer

from migrator.cli.common import CONFIG_OPTION, App, console, handle_errors, settings

sample_app = App(help="A small application per cell: an organization's notes, behind the edge router.",
                 no_args_is_help=True)


@sample_app.command("serve")
@handle_errors
def serve_command(
    cell: str = typer.Option(..., "--cell", help="The cell whose database it reads and writes."),
    listen: str | None = typer.Option(None, "--listen", help="HOST:PORT or unix:/path (default: the cell's first "
                                                             "app_servers entry)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
    config: str | None = CONFIG_OPTION,
) -> None:
    """Serve /orgs/{org}/notes for the organizations of one cell until interrupted. A write the cell's freeze
    guard refuses (SQLSTATE MG001) is answered 503 with Retry-After, as is a request for an organization the
    cell does not hold; every answer carries X-Cell."""
    from migrator.errors import ConfigError
    from migrator.sample.app import serve

    cfg = settings(config)
    cell_cfg = cfg.cell(cell)
    address = listen or (cell_cfg.app_servers[0] if cell_cfg.app_servers else None)
    if address is None:
        raise ConfigError(f"cell {cell!r} has no app_servers to listen on",
                          f"pass --listen HOST:PORT or set cells.{cell}.app_servers")
    if not address.startswith("unix:") and not address.rpartition(":")[2].isdigit():
        raise typer.BadParameter(f"{address!r} is not HOST:PORT or unix:/path", param_hint="--listen")
    console.print(f"sample application of {cell} on {address}", highlight=False)
    serve(cfg, cell, address, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.add_typer(sample_app, name="sample-app")
