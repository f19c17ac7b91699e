"""``migrator``: the operator's command line. ``migrator COMMAND --help`` explains each command."""

from __future__ import annotations

import importlib

import typer

from migrator.cli.common import setup_logging

app = typer.Typer(
    help="cells-migrator: move an organization between cells (freeze, copy, verify, flip).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module adds its commands to the app with register(app).
COMMAND_MODULES = (
    "migrator.cli.cells",
    "migrator.cli.schema",
    "migrator.cli.topology",
    "migrator.cli.seed",
    "migrator.cli.moves",
    "migrator.cli.demo",
    "migrator.cli.metrics",
    "migrator.cli.api",
    "migrator.cli.rebalance",
    "migrator.cli.router",
    "migrator.cli.sample_app",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    setup_logging(10 if verbose else 30)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
