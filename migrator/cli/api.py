"""``migrator api``: serve the operators' HTTP API (uvicorn), print its OpenAPI spec, make a token.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import json
import secrets
import sys

import typer

from migrator.cli.common import CONFIG_OPTION, App, console, handle_errors, settings

api_app = App(help="The operators' HTTP API (moves, cells, Alertmanager alerts, the rebalancer).",
              no_args_is_help=True)


@api_app.command("serve")
@handle_errors
def serve_command(
    host: str | None = typer.Option(None, "--host", help="Listen address (default: api.listen_host)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default: api.listen_port)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    config: str | None = CONFIG_OPTION,
) -> None:
    """Run the API with uvicorn until interrupted. Needs api.token in the config.

    OpenAPI at /openapi.json, docs at /docs, health at /healthz (no token).
    """
    import uvicorn

    from migrator.api import create_app

    cfg = settings(config)
    app = create_app(cfg)
    host = host or cfg.api.listen_host
    port = port or cfg.api.listen_port
    console.print(f"cells-migrator API on http://{host}:{port} (OpenAPI: /openapi.json)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)


@api_app.command("openapi")
@handle_errors
def openapi_command(config: str | None = CONFIG_OPTION) -> None:
    """Print the OpenAPI document (JSON)."""
    from migrator.api import create_app

    app = create_app(settings(config), require_configured_token=False)
    sys.stdout.write(json.dumps(app.openapi(), indent=2) + "\n")


@api_app.command("new-token")
def new_token_command() -> None:
    """Print a fresh random token for api.token (see docs/runbooks/api-token-leaked.md)."""
    sys.stdout.write(secrets.token_urlsafe(32) + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(api_app, name="api")
