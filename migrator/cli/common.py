"""What every CLI command shares: settings, one clear error message, JSON output.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any

import typer
from rich.console import Console

from migrator.config import Settings, load_settings
from migrator.dsn import install_log_masking, redact
from migrator.errors import MigratorError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")
CONFIG_OPTION = typer.Option(
    None, "--config", "-c", help="Config file (default: $MIGRATOR_CONFIG or ./migrator.yaml).", envvar="MIGRATOR_CONFIG"
)


def setup_logging(level: int = logging.WARNING) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_masking()


def settings(config: str | None = None) -> Settings:
    return load_settings(config)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def fail(message: str, hint: str | None = None, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {redact(message)}")
    if hint:
        err_console.print(f"[yellow]hint:[/] {redact(hint)}")
    return typer.Exit(code)


def handle_errors(func):
    """Turn a MigratorError into one clear message and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MigratorError as exc:
            raise fail(exc.message, exc.hint, exc.exit_code) from None

    return wrapper
