"""``migrator``: the operator's command line. ``migrator COMMAND --help`` explains each command.

The typer app is built on first use (``app``), so that ``migrator topology classify`` can answer from
:mod:`migrator.cli.fast` without loading typer, the config model or any other command.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import functools
import sys

# Each module adds its commands to the app with register(app).
COMMAND_MODULES = (
    "migrator.cli.cells",
    "migrator.cli.schema",
    "migrator.cli.topology",
    "migrator.cli.seed",
    "migrator.cli.moves",
    "migrator.cli.demo",
    "migrator.cli.metrics",
    "migrator.cli.broker",
    "migrator.cli.api",
    "migrator.cli.rebalance",
    "migrator.cli.router",
    "migrator.cli.sample_app",
)


@functools.cache
def build_app():
    import importlib

    import typer

    from migrator.cli.common import App, setup_logging

    app = App(
        help="cells-migrator: move an organization between cells (freeze, copy, verify, flip).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)

    @app.callback()
    def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
        setup_logging(10 if verbose else 30)

    return app


def __getattr__(name: str):
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> int | None:
    from migrator.cli.fast import run_fast

    code = run_fast(sys.argv[1:])
    if code is not None:
        return code
    build_app()()
    return None


if __name__ == "__main__":
    sys.exit(main())
