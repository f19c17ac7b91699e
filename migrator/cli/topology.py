"""``migrator topology``: run the Topology Service and read its routes."""

from __future__ import annotations

import dataclasses
import logging

import typer
from rich.table import Table

from migrator.cli.common import CONFIG_OPTION, JSON_OPTION, console, handle_errors, print_json, settings

topology_app = typer.Typer(help="The Topology Service: which cell each organization lives in.",
                           no_args_is_help=True)


@topology_app.command("serve")
@handle_errors
def serve_command(
    listen: str | None = typer.Option(None, "--listen", help="HOST:PORT to serve gRPC on (default: topology.listen)."),
    config: str | None = CONFIG_OPTION,
) -> None:
    """Serve the Topology Service over gRPC until SIGTERM/SIGINT (upgrades the control database first)."""
    from migrator.topology.server import serve

    ours = logging.getLogger("migrator")
    if ours.getEffectiveLevel() > logging.INFO:  # a server logs its start, stop and refusals
        ours.setLevel(logging.INFO)
    serve(settings(config), listen)


@topology_app.command("classify")
@handle_errors
def classify_command(
    organization_id: int = typer.Argument(..., help="Organization id."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Show the cell an organization is routed to."""
    route = _client(config).classify(organization_id)
    if json_output:
        print_json(dataclasses.asdict(route))
    else:
        _print_routes([route])


@topology_app.command("routes")
@handle_errors
def routes_command(
    cell: str | None = typer.Option(None, "--cell", help="Only routes to this cell."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """List the routes (organization -> cell), optionally of one cell."""
    routes = _client(config).list_routes(cell)
    if json_output:
        print_json([dataclasses.asdict(r) for r in routes])
    else:
        _print_routes(routes)


@topology_app.command("history")
@handle_errors
def history_command(
    organization_id: int = typer.Argument(..., help="Organization id."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Show every change to an organization's route, oldest first: who, when, why."""
    rows = _client(config).history(organization_id)
    if json_output:
        print_json(rows)
        return
    table = Table("at", "action", "from", "to", "version", "token", "actor", "reason")
    for r in rows:
        table.add_row(r["at"], r["action"], r["from_cell"] or "", r["to_cell"] or "", str(r["version"]),
                      r["token"] or "", r["actor"], r["reason"])
    console.print(table)


def _client(config: str | None):
    from migrator.topology.client import topology_client

    return topology_client(settings(config))


def _print_routes(routes) -> None:
    table = Table("organization", "cell", "version", "state", "move token")
    for r in routes:
        table.add_row(str(r.organization_id), r.cell, str(r.version), r.state, r.move_token or "")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(topology_app, name="topology")
