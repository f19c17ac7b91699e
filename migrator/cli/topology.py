"""``migrator topology``: run the Topology Service and read its routes.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from migrator.cli.common import (
    CONFIG_OPTION,
    JSON_OPTION,
    App,
    console,
    err_console,
    handle_errors,
    print_json,
    settings,
)
from migrator.cli.render import WIDE_OPTION, clock, key_column, list_table, short_column, text_column
from migrator.topology.certs import DEFAULT_DAYS, ROLES, describe, init_fleet, issue_client
from migrator.topology.client import topology_client

topology_app = App(help="The Topology Service: which cell each organization lives in.",
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
    wide: bool = WIDE_OPTION,
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Show every change to an organization's route, oldest first: who, when, why."""
    rows = _client(config).history(organization_id)
    if json_output:
        print_json(rows)
        return
    table = list_table()
    key_column(table, "at")
    short_column(table, "action")
    short_column(table, "from")
    short_column(table, "to")
    key_column(table, "version", justify="right")
    if wide:
        key_column(table, "token (sha256)")
        short_column(table, "actor")
    text_column(table, "reason", ratio=1)
    for r in rows:
        extra = [r["token_digest"] or "", r["actor"]] if wide else []
        table.add_row(clock(r["at"]), r["action"], r["from_cell"] or "", r["to_cell"] or "", str(r["version"]),
                      *extra, escape(r["reason"]))
    console.print(table)


@topology_app.command("repair")
@handle_errors
def repair_command(
    organization_id: int = typer.Argument(..., help="Organization id."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the route's history)."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Clear a freeze whose token no live move owns (admin certificate; refused while a live move owns it).

    Lifts the route's freeze in the Topology Service (recorded in its history with the reason) and
    the freeze guard in the cell it is routed to. Exit 1 if something could not be cleared."""
    from migrator.moves.operations import default_actor
    from migrator.topology.repair import repair_organization

    if not reason.strip():
        raise typer.BadParameter("a reason is required", param_hint="--reason")
    cfg = settings(config)
    client = topology_client(cfg)
    try:
        out = repair_organization(cfg, client, organization_id, actor=default_actor(), reason=reason)
    finally:
        client.close()
    if json_output:
        print_json(out)
    else:
        route = out["route"]
        if out["route_cleared"]:
            console.print(f"organization {organization_id}: route freeze (token sha256:{out['cleared_token_digest']}) "
                          f"cleared; route {route['cell']} v{route['version']} {route['state']}")
        else:
            console.print(f"organization {organization_id}: route on {route['cell']} was not frozen")
        if out["guard"]:
            console.print(f"freeze guard: {out['guard']}")
        for problem in out["problems"]:
            err_console.print(f"[red]problem:[/] {problem}")
    if out["problems"]:
        raise typer.Exit(1)


certs_app = App(help="Certificates of the Topology Service's mutual TLS: a CA, the server's, one per caller.",
                no_args_is_help=True)
topology_app.add_typer(certs_app, name="certs")


@certs_app.command("init")
@handle_errors
def certs_init_command(
    out: Path = typer.Argument(..., help="Folder for the files (created; an existing CA in it is reused)."),
    san: list[str] = typer.Option([], "--san", help="Another name or IP address of the server (repeatable); "
                                                     "localhost, 127.0.0.1, ::1 and this host's name are always in."),
    days: int = typer.Option(DEFAULT_DAYS, "--days", min=1, help="Validity of the server and client certificates."),
    renew: bool = typer.Option(False, "--renew", help="Issue the server and role certificates again (same CA)."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Make a CA, the server's certificate and one client certificate per role (reader, mover, admin)."""
    result = init_fleet(out, sans=san, days=days, renew=renew)
    files = {"ca": str(result["ca"]), "server": {k: str(v) for k, v in result["server"].items()},
             "clients": {r: {k: str(v) for k, v in f.items()} for r, f in result["clients"].items()},
             "created": result["created"]}
    if json_output:
        print_json(files)
        return
    console.print(f"certificates in {out.resolve()}: " + (", ".join(result["created"]) + " made" if result["created"]
                                                          else "all present (--renew issues them again)"))
    root = out.resolve()
    console.print("config of the server and of an admin client (workers: the mover pair, routers: the reader pair):")
    console.print(f"""topology:
  tls:
    ca: {root / "ca.pem"}
    server_cert: {root / "server.pem"}
    server_key: {root / "server-key.pem"}
    client_cert: {root / "admin.pem"}
    client_key: {root / "admin-key.pem"}""", markup=False, highlight=False)
    console.print(f"keep {root / 'ca-key.pem'} away from the fleet: it can issue any role.")


@certs_app.command("issue")
@handle_errors
def certs_issue_command(
    out: Path = typer.Argument(..., help="Folder holding the CA (ca.pem, ca-key.pem)."),
    name: str = typer.Argument(..., help="Who the certificate is for (its CN and file name), e.g. router-7."),
    role: str = typer.Option(..., "--role", help="reader, mover or admin."),
    days: int = typer.Option(DEFAULT_DAYS, "--days", min=1, help="Validity."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Issue one more client certificate from the fleet's CA (another router, a rotated worker)."""
    if role not in ROLES:
        raise typer.BadParameter(f"{role!r} is not one of {', '.join(ROLES)}", param_hint="--role")
    files = issue_client(out, name, role, days=days)
    if json_output:
        print_json({k: str(v) for k, v in files.items()})
    else:
        console.print(f"{files['cert']} and {files['key']}: {name}, role {role}, valid {days} days")


@certs_app.command("show")
@handle_errors
def certs_show_command(
    files: list[Path] = typer.Argument(..., help="Certificate files (PEM)."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Subject, role, issuer and expiry of certificates (exit 1 if one has expired)."""
    infos = [describe(f) for f in files]
    if json_output:
        print_json(infos)
    else:
        table = Table("file", "name", "role", "issuer", "expires", "days left")
        for i in infos:
            left = f"{i['days_left']:.0f}"
            table.add_row(i["path"], i["name"], i["role"] or "", i["issuer"], i["not_after"],
                          f"[red]{left}[/]" if i["days_left"] < 30 else left)
        console.print(table)
    if any(i["days_left"] < 0 for i in infos):
        raise typer.Exit(1)


def _client(config: str | None):
    return topology_client(settings(config))


def _print_routes(routes) -> None:
    table = Table("organization", "cell", "version", "state", "token (sha256)")
    for r in routes:
        table.add_row(str(r.organization_id), r.cell, str(r.version), r.state, r.token_digest or "")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(topology_app, name="topology")
