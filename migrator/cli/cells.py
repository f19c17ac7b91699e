"""``migrator cells`` (provision and size the cells) and ``migrator orgs`` (where organizations live).

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import typer
from psycopg import sql
from rich.markup import escape
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
from migrator.cli.render import WIDE_OPTION, clock, key_column, list_table, short_column, text_column
from migrator.errors import MigratorError

cells_app = App(help="Cells: provision their databases and see how full they are.", no_args_is_help=True)
orgs_app = App(help="Organizations: which cell each one lives in.", no_args_is_help=True)

CELL_OPTION = typer.Option(None, "--cell", help="Only this cell (repeat for several; default: every configured cell).")


def _topology(cfg):
    from migrator.topology.client import topology_client

    return topology_client(cfg)


def _close(client) -> None:
    close = getattr(client, "close", None)
    if close is not None:
        close()


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@cells_app.command("init")
@handle_errors
def init_command(
    cell: list[str] | None = CELL_OPTION,
    set_sequences: bool = typer.Option(
        False, "--set-sequences",
        help="Adopted cells: move sequences outside the cell's ID range (or unbounded) into it."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Provision cells: sample schema (unless adopt), freeze guard, Topology registration, sequence ranges.

    A cell with `adopt: true` keeps its schema and its sequences: they are only checked against the
    cell's ID range, and set with --set-sequences. Exits 1 when a sequence is outside its range.
    Safe to run again: a second run changes nothing.
    """
    from migrator.cells.provision import init_cells

    results = init_cells(settings(config), names=cell or None, set_sequences=set_sequences)
    outside = [(r["cell"], s) for r in results for s in r["sequences_outside"]]
    if json_output:
        print_json(results)
    else:
        table = Table("cell", "state", "sequence range", "schema", "guard", "sequences", "blob store")
        for r in results:
            lo, hi = r["range"]
            seq = f"{r['sequences_set']} set of {r['sequences']}"
            if r.get("sequences_skipped"):
                seq += f", {len(r['sequences_skipped'])} skipped"
            if r["sequences_outside"]:
                seq += f", [red]{len(r['sequences_outside'])} outside[/]"
            table.add_row(
                r["cell"], r["state"], f"{lo}..{hi}",
                "adopted" if r["adopt"] else ("applied" if r["schema_applied"] else "unchanged"),
                f"{'installed' if r['guard_installed'] else 'unchanged'} ({r['guard_tables']} tables)",
                seq, r["blob_store"],
            )
        console.print(table)
        for r in results:
            if r["guard_missing_tables"]:
                missing = ", ".join(r["guard_missing_tables"])
                err_console.print(f"[yellow]warning:[/] cell {r['cell']}: dictionary tables missing from the "
                                  f"database: {missing} (run `migrator schema check`)")
            if r["sequences_unbounded"]:
                hi = r["range"][1]
                names = ", ".join(s["name"] for s in r["sequences_unbounded"])
                err_console.print(f"[yellow]warning:[/] cell {r['cell']}: {len(r['sequences_unbounded'])} sequence(s) "
                                  f"in the cell's range but with no bound at its end {hi}: {names} "
                                  "(--set-sequences bounds them)")
        for name, s in outside:
            tables = ", ".join(s["tables"]) or "no table"
            err_console.print(f"[red]cell {name}: sequence {s['name']} ({tables}): {escape(s['note'])}[/]")
    if outside:
        err_console.print("[yellow]hint:[/] IDs drawn outside the cell's range can collide with another cell's "
                          "rows when organizations move; run `migrator cells init --set-sequences` to move these "
                          "sequences into the range (see docs/adopting-an-existing-fleet.md)")
        raise typer.Exit(1)


@cells_app.command("uninstall")
@handle_errors
def uninstall_command(
    cell: list[str] | None = CELL_OPTION,
    force: bool = typer.Option(False, "--force", help="Even while organizations are frozen in the cell."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Remove everything the migrator installed in the cells: guard triggers, schema `migrator`.

    Sequences set by `cells init --set-sequences` get their original bounds back. The application's
    tables and rows are never touched. Refused while an organization is frozen in the cell (a
    move is running or awaits cleanup) unless --force. The cells stay registered in the Topology
    Service.
    """
    from migrator.cells.provision import uninstall_cells

    results = uninstall_cells(settings(config), names=cell or None, force=force)
    if json_output:
        print_json(results)
        return
    table = Table("cell", "removed", "sequences restored")
    for r in results:
        table.add_row(r["cell"], str(len(r["removed"])) + (" (nothing installed)" if not r["removed"] else ""),
                      ", ".join(r["sequences_restored"]) or "-")
    console.print(table)


@cells_app.command("list")
@handle_errors
def list_command(wide: bool = WIDE_OPTION, json_output: bool = JSON_OPTION,
                 config: str | None = CONFIG_OPTION) -> None:
    """Every configured cell: state, sequence range, organizations routed to it, rows and bytes."""
    from migrator.cells.provision import cell_stats
    from migrator.dictionary import load_dictionary

    cfg = settings(config)
    dictionary = load_dictionary(cfg.dictionary_file())
    client = _topology(cfg)
    try:
        registered = {c.name: c for c in client.list_cells()}
        routed: dict[str, int] = {}
        for route in client.list_routes():
            routed[route.cell] = routed.get(route.cell, 0) + 1
    finally:
        _close(client)
    # The rebalancer's cached capacity readings (refreshed by celery beat), when there are any.
    from migrator.rebalance.store import RebalanceStore

    try:
        readings = {r.cell: r for r in RebalanceStore(cfg.control_dsn).cell_readings()}
    except Exception:  # noqa: BLE001 - readings are an extra; the live figures below still answer
        readings = {}
    rows, failed = [], False
    for name in sorted(set(cfg.cells) | set(registered)):
        info = registered.get(name)
        row = {
            "cell": name,
            "configured": name in cfg.cells,
            "registered": info is not None,
            "state": info.state if info else "unregistered",
            "seq_min": info.seq_min if info else None,
            "seq_max": info.seq_max if info else None,
            "organizations_routed": routed.get(name, 0),
            "organizations": None,
            "rows": None,
            "bytes": None,
            "error": None,
        }
        reading = readings.get(name)
        if reading is not None:
            row["capacity"] = {"measured_at": reading.measured_at.isoformat(), "bytes": reading.bytes,
                               "blob_bytes": reading.blob_bytes, "database_bytes": reading.database_bytes,
                               "organizations": reading.organizations, "moves_in": reading.moves_in,
                               "moves_out": reading.moves_out}
        if name in cfg.cells:
            try:
                stats = cell_stats(cfg, name, dictionary)
                row.update(organizations=stats["organizations"], rows=stats["rows"], bytes=stats["bytes"],
                           tables=stats["tables"])
            except MigratorError as exc:
                row["error"] = exc.message
                failed = True
        rows.append(row)
    if json_output:
        print_json(rows)
    else:
        _print_cells(rows, wide)
    if failed:
        raise typer.Exit(1)


def _print_cells(rows: list[dict], wide: bool) -> None:
    """At 80 columns: the cell, its state, organizations, rows, size and a note; --wide adds the
    sequence range and the rebalancer's cached readings (with when they were measured)."""
    cached = wide and any(r.get("capacity") for r in rows)  # the rebalancer's readings, once there are some
    table = list_table()
    key_column(table, "cell")
    short_column(table, "state")
    if wide:
        key_column(table, "sequence range")
    for col in ("orgs routed", "orgs in db", "rows", "size"):
        key_column(table, col, justify="right")
    if cached:
        for col in ("load (cached)", "moves in/out", "measured"):
            key_column(table, col)
    text_column(table, "note", ratio=1)
    for r in rows:
        cap = r.get("capacity")
        rng = [f"{r['seq_min']}..{r['seq_max']}" if r["registered"] else "-"] if wide else []
        readings = [_human_bytes(cap["bytes"]), f"{cap['moves_in']}/{cap['moves_out']}", clock(cap["measured_at"])] \
            if cap else ["-", "-", ""]
        note = r["error"] or ("" if r["configured"] else "registered but not configured")
        table.add_row(r["cell"], r["state"], *rng, str(r["organizations_routed"]),
                      "-" if r["organizations"] is None else str(r["organizations"]),
                      "-" if r["rows"] is None else str(r["rows"]), _human_bytes(r["bytes"]),
                      *(readings if cached else []), escape(note))
    console.print(table)


@cells_app.command("health")
@handle_errors
def health_command(cells: list[str] = CELL_OPTION,
                   table: list[str] = typer.Option(None, "--table", help="Also check autovacuum on this table "
                                                   "(repeat for several)."),
                   wide: bool = WIDE_OPTION, json_output: bool = JSON_OPTION,
                   config: str | None = CONFIG_OPTION) -> None:
    """Each cell's health indicators, as moves read them: replication lag, WAL waiting for the archiver,
    autovacuum, active backends, lock waits, the canary; each with its signal (normal, slow down, stop).

    Exit code 0 when every reading is normal, 1 when one says slow down or stop (docs/adr/0019)."""
    from migrator.health.indicators import read_cell
    from migrator.health.signals import Signal, merge

    cfg = settings(config)
    names = cells or sorted(cfg.cells)
    readings = []
    for name in names:
        cell = cfg.cell(name)
        limits = cfg.health.limits(name)
        readings += read_cell(cell.dsn, name, limits, tables=table or (), standbys=cell.standbys,
                              timeout_s=cfg.health.connect_timeout_s)
    worst = merge(readings).signal
    rows = [r.as_dict() for r in readings]
    if json_output:
        print_json({"enabled": cfg.health.enabled, "signal": worst.label, "readings": rows})
    else:
        t = list_table()
        key_column(t, "cell")
        key_column(t, "indicator")
        key_column(t, "signal")
        key_column(t, "value", justify="right")
        key_column(t, "slow / stop", justify="right")
        if wide:
            text_column(t, "detail", ratio=1)
        colour = {"normal": "green", "slow down": "yellow", "stop": "red"}

        def fmt(v, unit: str) -> str:
            if v is None:
                return "-"
            return f"{v:.0%}" if unit == "fraction" else f"{v:g}"

        for r in rows:
            unit = "" if r["unit"] in ("", "fraction") else f" {r['unit']}"
            limits = "-" if r["slow"] is None and r["stop"] is None \
                else f"{fmt(r['slow'], r['unit'])} / {fmt(r['stop'], r['unit'])}"
            value = "-" if r["value"] is None else fmt(r["value"], r["unit"]) + unit
            t.add_row(r["cell"], r["indicator"], f"[{colour[r['signal']]}]{r['signal']}[/]", value, limits,
                      *([escape(r["detail"])] if wide else []))
        console.print(t)
        for r in rows:
            if r["signal"] != "normal":
                console.print(f"[{colour[r['signal']]}]{r['signal']}[/]: {escape(r['reason'])}")
        if not cfg.health.enabled:
            console.print("health.enabled is false: moves do not throttle on these readings")
    if worst is not Signal.NORMAL:
        raise typer.Exit(1)


def _org_rows(cfg, cell: str, dictionary) -> tuple[dict[int, int], set[int]]:
    """Rows per organization in ``cell`` (all organization tables) and the organizations it holds."""
    from migrator.cells.introspect import introspect
    from migrator.cells.names import qualified
    from migrator.db import cell_connection

    counts: dict[int, int] = {}
    with cell_connection(cfg, cell, autocommit=True) as conn:
        live = introspect(conn)
        root = dictionary.root_table
        if root not in live.tables:
            return counts, set()
        root_pk = dictionary.root_key(live)
        present = {int(r[0]) for r in conn.execute(
            sql.SQL("SELECT {} FROM {}").format(sql.Identifier(root_pk), qualified(root)))}
        for table in dictionary.org_tables():
            if table not in live.tables:
                continue
            query = sql.SQL("SELECT {org} AS org, count(*) FROM {table} AS t GROUP BY 1").format(
                org=dictionary.org_of_row_sql(table, live, "t"), table=qualified(table))
            for org, n in conn.execute(query):
                if org is not None:
                    counts[int(org)] = counts.get(int(org), 0) + int(n)
    return counts, present


@orgs_app.command("list")
@handle_errors
def orgs_list_command(
    cell: str | None = typer.Option(None, "--cell", help="Only organizations of this cell, with their row counts."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Organizations: their cell and route (state, version) in the Topology Service; rows with --cell."""
    cfg = settings(config)
    if cell is not None:
        cfg.cell(cell)
    client = _topology(cfg)
    try:
        routes = client.list_routes()
    finally:
        _close(client)
    rows = [{"organization_id": r.organization_id, "cell": r.cell, "state": r.state, "version": r.version,
             "token_digest": r.token_digest} for r in routes if cell is None or r.cell == cell]
    if cell is not None:
        from migrator.dictionary import load_dictionary

        counts, present = _org_rows(cfg, cell, load_dictionary(cfg.dictionary_file()))
        routed_to = {r.organization_id: r.cell for r in routes}
        for row in rows:
            row["rows"] = counts.get(row["organization_id"], 0)
            row["in_cell"] = row["organization_id"] in present
        # Organizations with rows here but routed elsewhere (a source copy awaiting cleanup) or nowhere.
        for org in sorted(present - {r["organization_id"] for r in rows}):
            other = routed_to.get(org)
            rows.append({"organization_id": org, "cell": cell, "state": "routed_elsewhere" if other else "unrouted",
                         "version": None, "token_digest": None, "rows": counts.get(org, 0), "in_cell": True,
                         "routed_to": other})
        rows.sort(key=lambda r: r["organization_id"])
    if json_output:
        print_json(rows)
        return
    columns = ["organization", "cell", "state", "version"] + (["rows"] if cell is not None else [])
    table = Table(*columns)
    for r in rows:
        state = r["state"] + (f" (routed to {r['routed_to']})" if r.get("routed_to") else "")
        values = [str(r["organization_id"]), r["cell"], state, "-" if r["version"] is None else str(r["version"])]
        if cell is not None:
            values.append(str(r["rows"]))
        table.add_row(*values)
    console.print(table)


@orgs_app.command("discover")
@handle_errors
def orgs_discover_command(
    cell: str = typer.Option(..., "--cell", help="The cell whose organizations to discover."),
    register_routes: bool = typer.Option(False, "--register", help="Route the organizations found only here "
                                                                   "to this cell in the Topology Service."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Find the organizations living in a cell (the dictionary's root table) and register their routes.

    An organization found in several cells, routed to a cell where it has no rows, or routed to this
    cell without rows here is a conflict: reported, never registered. Exits 1 when there is any.
    """
    from migrator.cells.discover import REGISTERED_NOW, UNREGISTERED, discover_orgs

    report = discover_orgs(settings(config), cell, register=register_routes)
    if json_output:
        print_json(report.as_dict())
    else:
        table = Table("organization", "status", "routed to", "also in", "note")
        for f in report.findings:
            style = "red" if f.conflict else ("green" if f.status == REGISTERED_NOW else "")
            status = f"[{style}]{f.status}[/]" if style else f.status
            table.add_row(str(f.organization_id), status, f.routed_to or "-", ", ".join(f.also_in) or "-",
                          escape(f.reason))
        console.print(table)
        counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items())) or "no organizations"
        console.print(f"cell {cell} ({report.root_table}): {counts}")
        if not register_routes and report.counts().get(UNREGISTERED):
            console.print("run again with --register to route the unregistered ones to this cell")
    if report.conflicts:
        err_console.print(f"[red]{len(report.conflicts)} conflict(s)[/]: not registered; resolve each (see the "
                          "note) and run discovery again (docs/adopting-an-existing-fleet.md)")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(cells_app, name="cells")
    app.add_typer(orgs_app, name="orgs")
