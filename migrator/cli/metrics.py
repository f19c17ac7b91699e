"""``migrator metrics serve``: the control-database exporter for Prometheus.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import typer

from migrator.cli.common import CONFIG_OPTION, App, handle_errors, settings


def register(app: typer.Typer) -> None:
    group = App(help="Prometheus metrics read from the control database.", no_args_is_help=True)

    @group.command("serve")
    @handle_errors
    def serve_cmd(port: int = typer.Option(9700, "--port", help="Port of the /metrics endpoint."),
                  addr: str = typer.Option("127.0.0.1", "--addr",
                                           help="Address to listen on (the endpoint has no authentication: "
                                                "widen it only for a Prometheus on another host)."),
                  config: str = CONFIG_OPTION):
        """Serve moves by state, per-move step and frozen seconds, and cell capacity gauges."""
        from migrator.observability.exporter import serve

        serve(settings(config), port, addr)

    app.add_typer(group, name="metrics")
