"""Every command's --help: no placeholder after a flag (typer 0.29 prints `<bool>`), types after options
that take a value."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from migrator.cli.main import build_app


def _commands(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def test_no_help_shows_a_placeholder_after_a_flag():
    root = typer.main.get_command(build_app())
    runner = CliRunner()
    seen = 0
    for path, _ in _commands(root):
        result = runner.invoke(build_app(), [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, (path, result.output)
        assert re.search(r"--help\s+Show this message", result.output), (path, result.output)
        seen += 1
    assert seen > 40
    move = runner.invoke(build_app(), ["move", "--help"], env={"COLUMNS": "120"}).output
    # Options that take a value still say which.
    assert re.search(r"--org\s+<int>", move) and re.search(r"--to\s+<str>", move)
    assert re.search(r"--wait\s+Show live progress", move) and re.search(r"--dry-run\s+Run preflight", move)
    abort = runner.invoke(build_app(), ["abort", "--help"], env={"COLUMNS": "120"}).output
    assert re.search(r"--wait\s+--no-wait\s+Wait until", abort), abort
    cleanup = runner.invoke(build_app(), ["cleanup", "--help"], env={"COLUMNS": "120"}).output
    assert re.search(r"--timeout\s+<float>", cleanup) and re.search(r"--accept-differences\s+REASON", cleanup)
