"""``migrator router``: the edge router (HAProxy) in front of the cells, kept in step with the routes.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer
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

router_app = App(help="The edge router: HAProxy in front of the cells, following the Topology Service.",
                 no_args_is_help=True)

SOCKET_OPTION = typer.Option(None, "--socket", help="An HAProxy admin socket (unix path or HOST:PORT; repeatable). "
                                                    "Default: router.admin_sockets.")


@router_app.command("config")
@handle_errors
def config_command(
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write it (default: router.haproxy_config)."),
    admin_socket: str | None = typer.Option(None, "--admin-socket",
                                            help="The admin socket it declares (default: router.admin_sockets[0])."),
    check: bool = typer.Option(True, "--check/--no-check",
                               help="Validate with `haproxy -c` when haproxy is installed."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Write HAProxy's configuration: one backend per cell (cells.<name>.app_servers), the organization taken
    from each request (router.org_from), 404 or a default cell for unknown organizations, 503 with Retry-After
    for writes to frozen ones. Creates empty map files where none exist (`router sync` fills them)."""
    from migrator.router.haproxy_config import write

    result = write(settings(config), out, admin_socket=admin_socket, validate=check)
    if json_output:
        print_json(result)
        return
    checked = " (checked with haproxy -c)" if result["checked_with_haproxy"] else ""
    console.print(f"wrote {result['config']}{checked}")
    console.print(f"maps: {result['maps']['orgs']}, {result['maps']['frozen']}"
                  + (f" (created empty: {len(result['maps_created'])})" if result["maps_created"] else ""))
    console.print(f"listens on {result['listen']}; admin socket {result['admin_socket']}")
    for warning in result["warnings"]:
        err_console.print(f"[yellow]warning:[/] {warning}")
    console.print("next: `migrator router sync --once` (fill the maps), start HAProxy "
                  f"(haproxy -W -f {result['config']}), then `migrator router sync`.")


@router_app.command("sync")
@handle_errors
def sync_command(
    once: bool = typer.Option(False, "--once", help="Read every route once, apply them and write the map files, "
                                                    "then exit (exit 1 if an HAProxy did not take them)."),
    sockets: list[str] | None = SOCKET_OPTION,
    files: bool = typer.Option(True, "--files/--no-files", help="Rewrite the map files too (so a restarted HAProxy "
                                                                "starts current)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Port of /metrics (default: "
                                                                         "router.metrics_port; 0: none)."),
    metrics_addr: str | None = typer.Option(None, "--metrics-addr", help="Address of /metrics (default: "
                                                                         "router.metrics_addr)."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Keep every HAProxy's maps in step with the Topology Service: all routes at start, then each change as it
    commits (WatchRoutes; a reader's certificate is enough), everything again after a reconnect; the map files
    rewritten too. Runs until SIGTERM/SIGINT. Its lag is exported as migrator_router_sync_lag_seconds."""
    from migrator.router.sync import RouterSync, serve_metrics

    ours = logging.getLogger("migrator")
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    cfg = settings(config)
    sync = RouterSync.from_settings(cfg, sockets=sockets or None, write_files=files)
    if once:
        report = sync.sync_once()
        if json_output:
            print_json(report)
        else:
            console.print(f"{report['routes']} routes ({report['frozen']} frozen) at revision {report['revision']}")
            for label, state in report["haproxy"].items():
                console.print(f"  HAProxy {label}: {state}")
        if any(state != "current" for state in report["haproxy"].values()):
            raise typer.Exit(1)
        return
    port = cfg.router.metrics_port if metrics_port is None else (metrics_port or None)
    if port:
        serve_metrics(sync, metrics_addr or cfg.router.metrics_addr, port)
        logging.getLogger(__name__).info("router sync: metrics on http://%s:%s/metrics",
                                         metrics_addr or cfg.router.metrics_addr, port)
    stop = threading.Event()

    def on_signal(signum, _frame):
        logging.getLogger(__name__).info("router sync: received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    sync.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        sync.stop()


@router_app.command("check")
@handle_errors
def check_command(
    sockets: list[str] | None = SOCKET_OPTION,
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Compare each HAProxy's maps with the Topology Service's routes (exit 1 if one differs or does not answer).

    A change committed while this runs can show as a difference: run it again to confirm."""
    from migrator.router.check import compare_all

    cfg = settings(config)
    results = compare_all(cfg, sockets or None)
    if json_output:
        print_json(results)
    else:
        table = Table("haproxy", "routes", "frozen", "missing", "extra", "different", "examples")
        for r in results["haproxy"]:
            if r.get("error"):
                table.add_row(r["haproxy"], "", "", "", "", "", f"[red]{r['error']}[/]")
                continue
            table.add_row(r["haproxy"], str(r["routes"]), str(r["frozen"]), str(r["missing"]), str(r["extra"]),
                          str(r["different"]), "; ".join(r["examples"]))
        console.print(table)
        if results["ok"]:
            console.print(f"every HAProxy matches the {results['routes']} routes of the Topology Service")
        else:
            err_console.print("[red]an HAProxy differs from the Topology Service[/] "
                              "(docs/runbooks/alert-router-sync-lagging.md)")
    if not results["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(router_app, name="router")
