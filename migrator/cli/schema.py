"""``migrator schema check``: hold the data dictionary against every cell's live schema.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import typer
from rich.markup import escape

from migrator.cli.common import CONFIG_OPTION, JSON_OPTION, App, console, handle_errors, print_json, settings
from migrator.errors import MigratorError

schema_app = App(help="The cells' database schemas and the data dictionary.", no_args_is_help=True)


@schema_app.command("check")
@handle_errors
def check_command(
    cell: list[str] | None = typer.Option(None, "--cell", help="Only this cell (repeat for several; default: all)."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Compare the data dictionary with each cell's live schema, and the cells with each other.

    Prints every problem (unclassified table, missing table or column, sharding key that misses the
    root, organization table without primary key, schema drift between cells) with a hint.
    Exits 1 when there is any problem. Advice (a sharding-key column without an index: every move
    then reads the whole table) is printed too but does not fail the check.
    """
    from migrator.cells.introspect import introspect
    from migrator.db import cell_connection
    from migrator.dictionary import load_dictionary
    from migrator.dictionary.check import check_advice, check_key_sql, check_schema

    cfg = settings(config)
    names = list(cell) if cell else list(cfg.cells)
    if not names:
        raise MigratorError("no cells are configured", "add cells under 'cells:' in the config")
    for name in names:
        cfg.cell(name)
    dictionary = load_dictionary(cfg.dictionary_file(), strict=False)
    report: dict[str, dict] = {}
    lives = {}
    for name in names:
        try:
            with cell_connection(cfg, name, autocommit=True) as conn:
                live = introspect(conn)
                computed = check_key_sql(conn, dictionary, live)
        except MigratorError as exc:
            report[name] = {"error": exc.message, "hint": exc.hint, "problems": []}
            continue
        lives[name] = live
        problems = [p.as_dict() for p in check_schema(dictionary, live) + computed]
        report[name] = {"fingerprint": live.fingerprint(dictionary.org_tables()), "problems": problems,
                        "advice": [a.as_dict() for a in check_advice(dictionary, live)]}

    # Schema drift: a move needs the same organization tables on both sides.
    if len(lives) > 1:
        first, *others = lives
        tables = dictionary.org_tables()
        for name in others:
            for table, column, line in lives[first].diff_items(lives[name], tables, names=(first, name)):
                report[name]["problems"].append({
                    "kind": "drift", "table": table, "column": column,
                    "message": f"schema differs from cell {first}: {line}",
                    "hint": "run the same schema migrations on every cell; moves between these cells are refused",
                })

    ok = all(not r["problems"] and "error" not in r for r in report.values())
    if json_output:
        print_json({"ok": ok, "dictionary": str(dictionary.source), "cells": report})
    else:
        _print_report(report, str(dictionary.source))
    if not ok:
        raise typer.Exit(1)


def _print_report(report: dict[str, dict], source: str) -> None:
    console.print(f"dictionary: {escape(source)}")
    for name, r in report.items():
        if "error" in r:
            console.print(f"[bold red]cell {escape(name)}: unavailable:[/] {escape(r['error'])}")
            if r.get("hint"):
                console.print(f"    [yellow]hint:[/] {escape(r['hint'])}")
            continue
        if not r["problems"]:
            console.print(f"[green]cell {escape(name)}: ok[/] (schema {r['fingerprint'][:12]})")
        else:
            console.print(f"[bold red]cell {escape(name)}: {len(r['problems'])} problem(s)[/]")
        for p in r["problems"]:
            where = p["table"] + (f".{p['column']}" if p["column"] else "")
            console.print("  " + escape(f"[{p['kind']}] {where}: {p['message']}"), soft_wrap=True)
            console.print(f"    [yellow]hint:[/] {escape(p['hint'])}", soft_wrap=True)
        for a in r.get("advice", []):
            console.print("  [yellow]advice:[/] " + escape(f"{a['table']}.{a['column']}: {a['message']}"),
                          soft_wrap=True)
            console.print(f"    [yellow]hint:[/] {escape(a['hint'])}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(schema_app, name="schema")
