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
from typer.core import TyperCommand, TyperGroup, TyperOption

from migrator.config import Settings, load_settings
from migrator.dsn import install_log_masking, redact
from migrator.errors import MigratorError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

def _no_placeholder(param):
    """A flag takes no value: its --help line shows no ``<bool>`` after it (typer's rich help prints the
    metavar instead of the type when there is one; the plain help already leaves flags bare)."""
    if isinstance(param, TyperOption) and (param.is_flag or param.count) and param.metavar is None:
        param.metavar = ""
    return param


class _BareFlags:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            _no_placeholder(param)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        return None if option is None else _no_placeholder(option)


class Command(_BareFlags, TyperCommand):
    """Every migrator command: flags without a placeholder in --help."""


class Group(_BareFlags, TyperGroup):
    """Every migrator command group: flags without a placeholder in --help."""


class App(typer.Typer):
    """``typer.Typer`` for the migrator's command line: its groups and commands are :class:`Group` and
    :class:`Command` unless a ``cls`` is given."""

    def __init__(self, **kwargs):
        kwargs.setdefault("cls", Group)
        super().__init__(**kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


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
