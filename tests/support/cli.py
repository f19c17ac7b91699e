"""The ``migrator`` CLI in this process (typer's runner), for tests that read its output."""

from __future__ import annotations

import json

from typer.testing import CliRunner


def run_cli(*args):
    from migrator.cli.main import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def run_json(*args, code: int = 0):
    """``migrator ARGS --json``, expecting exit code ``code``; the parsed output."""
    result = run_cli(*args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)
