"""``migrator rebalance``: plans, approval, the global pause, decisions, capacity readings, pins.

Also adds ``migrator orgs pin|unpin|pins`` and ``migrator cells capacity`` to the groups of
``migrator.cli.cells`` (registered after it in ``COMMAND_MODULES``).

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import typer
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
from migrator.cli.render import WIDE_OPTION, ago, clock, key_column, list_table, text_column
from migrator.moves.operations import default_actor
from migrator.rebalance.planner import human_bytes

rebalance_app = App(
    help="The rebalancer: plans that move organizations off hot cells, within guardrails.", no_args_is_help=True)

REASON_OPTION = typer.Option("", "--reason", help="Why (kept in the decisions log).")


def _rebalancer(config):
    from migrator.rebalance.service import Rebalancer

    return Rebalancer(settings(config))


def _print_plan(data: dict) -> None:
    colour = {"awaiting_approval": "yellow", "applying": "cyan", "done": "green", "empty": "dim"}.get(
        data["status"], "white")
    console.print(f"[bold]plan {data['id']}[/]  cell {data['cell']}  [{colour}]{data['status']}[/]  "
                  f"goal {data.get('goal') or '-'}  (made by {data['created_by']}, {data['trigger']})",
                  highlight=False)
    console.print(data["summary"], highlight=False)
    if data.get("readings_age_s") is not None:
        console.print(f"[dim]from readings {data['readings_age_s']:.0f} s old[/]")
    if data["items"]:
        t = Table("#", "organization", "to", "bytes", "rows", "window", "state", "reason", title="moves")
        for i in data["items"]:
            state = i["state"] + (f" ({i['move_state']})" if i.get("move_state") else "")
            if i.get("note"):
                state += f": {i['note']}"
            t.add_row(str(i["ordinal"]), str(i["organization_id"]), i["target"], human_bytes(i["bytes"]),
                      f"{i['rows']:,}", f"{i['window_s']:.1f} s", state, i["reason"])
        console.print(t)
    if data.get("targets"):
        t = Table("target", "now", "after", "high water", "receives", "note", title="targets")
        for x in data["targets"]:
            t.add_row(x["cell"], human_bytes(x["bytes"]), human_bytes(x.get("after_bytes", x["bytes"])),
                      human_bytes(x.get("high_water_bytes")), str(x.get("receives", 0)), x.get("excluded", ""))
        console.print(t)
    if data.get("skipped"):
        t = Table("organization", "why not", title="not considered")
        for s in data["skipped"]:
            t.add_row(str(s["organization_id"]), s["reason"])
        console.print(t)


@rebalance_app.command("plan")
@handle_errors
def plan_command(
    cell: str | None = typer.Option(None, "--cell", help="Plan for this cell (default: every hot cell)."),
    refresh: bool = typer.Option(False, "--refresh", help="Measure the cells first (default: cached readings)."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Make a plan and print it with the reason for every choice. It waits for `rebalance apply`."""
    from migrator.rebalance.service import plan_as_dict

    rb = _rebalancer(config)
    if refresh:
        rb.refresh()
    if rb.readings_age_s() is None:
        raise typer.Exit(_no_readings())
    cells = [cell] if cell else rb.hot_cells()
    if not cells:
        if json_output:
            print_json([])
        else:
            console.print("no cell is above its high-water mark (plan for one with --cell NAME)")
        return
    out = []
    for name in cells:
        row, _ = rb.make_plan(name, trigger="operator", actor=default_actor(), status="awaiting_approval")
        out.append(plan_as_dict(rb.store, row))
    if json_output:
        print_json(out)
        return
    for data in out:
        _print_plan(data)
        if data["status"] == "awaiting_approval":
            console.print(f"apply it with: migrator rebalance apply {data['id']}", highlight=False)


def _no_readings() -> int:
    err_console.print("[red]error:[/] no capacity readings yet")
    err_console.print("[yellow]hint:[/] run `migrator rebalance refresh` (celery beat does it every "
                      "rebalance.readings_every_s)")
    return 1


@rebalance_app.command("apply")
@handle_errors
def apply_command(
    plan_id: str = typer.Argument(..., help="The plan id (`migrator rebalance plans`)."),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Approve a plan and start its moves within the guardrails (the rest start as slots free)."""
    rb = _rebalancer(config)
    result = rb.apply(plan_id, default_actor())
    if json_output:
        print_json(result)
        return
    if result.get("paused"):
        console.print("[yellow]the rebalancer is paused:[/] the plan is approved; its moves start after "
                      "`migrator rebalance resume`")
    for s in result["started"]:
        console.print(f"started move {s['move_id']} of organization {s['organization_id']}", highlight=False)
    for s in result["deferred"]:
        console.print(f"[yellow]waiting[/] organization {s['organization_id']}: {s['reason']}", highlight=False)
    for s in result["skipped"]:
        console.print(f"[red]skipped[/] organization {s['organization_id']}: {s['reason']}", highlight=False)


@rebalance_app.command("plans")
@handle_errors
def plans_command(
    plan_id: str | None = typer.Argument(None, help="One plan in detail (omit to list plans)."),
    cell: str | None = typer.Option(None, "--cell", help="Only plans of this cell."),
    limit: int = typer.Option(20, "--limit", min=1),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Plans, newest first, or one plan with its items and their moves."""
    from migrator.rebalance.service import plan_as_dict

    rb = _rebalancer(config)
    if plan_id:
        data = plan_as_dict(rb.store, rb.store.get_plan(plan_id))
        print_json(data) if json_output else _print_plan(data)
        return
    rows = [plan_as_dict(rb.store, p) for p in rb.store.plans(cell=cell, limit=limit)]
    if json_output:
        print_json(rows)
        return
    t = Table("plan", "cell", "status", "trigger", "created", "moves", "summary")
    for p in rows:
        t.add_row(p["id"], p["cell"], p["status"], p["trigger"], clock(p["created_at"]), str(len(p["items"])),
                  p["summary"])
    console.print(t)


@rebalance_app.command("decisions")
@handle_errors
def decisions_command(
    cell: str | None = typer.Option(None, "--cell", help="Only decisions about this cell."),
    plan: str | None = typer.Option(None, "--plan", help="Only decisions about this plan."),
    limit: int = typer.Option(50, "--limit", min=1),
    json_output: bool = JSON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Every decision: alerts received, plans made, moves started, skipped or deferred, and why."""
    from migrator.rebalance.service import decision_as_dict

    rb = _rebalancer(config)
    rows = [decision_as_dict(d) for d in rb.store.decisions(cell=cell, plan_id=plan, limit=limit)]
    if json_output:
        print_json(rows)
        return
    t = Table("at", "kind", "cell", "org", "actor", "message")
    for d in reversed(rows):
        t.add_row(clock(d["at"]), d["kind"], d["cell"] or "", str(d["organization_id"] or ""), d["actor"],
                  d["message"])
    console.print(t)


@rebalance_app.command("pause")
@handle_errors
def pause_command(reason: str = REASON_OPTION, config: str | None = CONFIG_OPTION) -> None:
    """Stop the rebalancer: alerts are still recorded, but no plan is made and no move started."""
    changed = _rebalancer(config).pause(default_actor(), reason)
    console.print("rebalancer paused" if changed else "rebalancer was already paused")


@rebalance_app.command("resume")
@handle_errors
def resume_command(reason: str = REASON_OPTION, config: str | None = CONFIG_OPTION) -> None:
    """Let the rebalancer act again (pending items of approved plans start at the next tick)."""
    changed = _rebalancer(config).resume(default_actor(), reason)
    console.print("rebalancer resumed" if changed else "rebalancer was not paused")


@rebalance_app.command("status")
@handle_errors
def status_command(json_output: bool = JSON_OPTION, config: str | None = CONFIG_OPTION) -> None:
    """Paused or not, approval mode, guardrails, age of the readings, open plans."""
    data = _rebalancer(config).status()
    if json_output:
        print_json(data)
        return
    for key, value in data.items():
        console.print(f"{key}: {value}", highlight=False)


@rebalance_app.command("refresh")
@handle_errors
def refresh_command(json_output: bool = JSON_OPTION, config: str | None = CONFIG_OPTION) -> None:
    """Measure every cell now (what celery beat does every rebalance.readings_every_s)."""
    rows = _rebalancer(config).refresh()
    if json_output:
        print_json(rows)
        return
    for r in rows:
        if r.get("error"):
            console.print(f"[red]{r['cell']}: {r['error']}[/]")
        else:
            console.print(f"{r['cell']}: {r['organizations']} organizations, {human_bytes(r['bytes'])} "
                          f"({r['duration_s']:.1f} s)", highlight=False)
    if any(r.get("error") for r in rows):
        raise typer.Exit(1)


def capacity_command(wide: bool = WIDE_OPTION, json_output: bool = JSON_OPTION,
                     config: str | None = CONFIG_OPTION) -> None:
    """Capacity readings of every cell (cached; `migrator rebalance refresh` measures now). At 80 columns:
    cell, state, organizations, bytes, marks, moves, age, note; --wide adds blobs, database and reclaimable."""
    from migrator.rebalance.readings import reading_as_dict

    rb = _rebalancer(config)
    cfg = rb.settings
    now = rb.store.now()
    rows = [reading_as_dict(r, now, thresholds=cfg.rebalance.thresholds(r.cell)) for r in rb.store.cell_readings()]
    if json_output:
        print_json(rows)
        return
    if not rows:
        raise typer.Exit(_no_readings())
    t = list_table()
    for col in ("cell", "state"):
        key_column(t, col)
    for col in ("orgs", "bytes", "high / low water"):
        key_column(t, col, justify="right")
    if wide:
        for col in ("blobs", "database", "reclaimable"):
            key_column(t, col, justify="right")
    key_column(t, "in/out")
    key_column(t, "age", justify="right")
    text_column(t, "note", ratio=1)
    for r in rows:
        th = r["thresholds"]
        marks = f"{human_bytes(th['high_water_bytes'])} / {human_bytes(th['low_water_bytes'])}"
        if th["high_water_orgs"] is not None:
            marks += f"; {th['high_water_orgs']} / {th['low_water_orgs']} orgs"
        name = f"[red]{r['cell']}[/]" if r["hot"] else r["cell"]
        extra = [human_bytes(r["blob_bytes"]), human_bytes(r["database_bytes"]),
                 human_bytes(r["reclaimable_bytes"])] if wide else []
        t.add_row(name, r["state"], str(r["organizations"]), human_bytes(r["bytes"]), marks, *extra,
                  f"{r['moves_in']}/{r['moves_out']}", ago(r["age_s"]) if r["age_s"] is not None else "-",
                  escape(r["error"] or ("hot" if r["hot"] else "")))
    console.print(t)


def pin_command(
    organization_id: int = typer.Argument(..., help="The organization id."),
    reason: str = REASON_OPTION,
    config: str | None = CONFIG_OPTION,
) -> None:
    """Pin an organization: the rebalancer never moves it (operators still can)."""
    _rebalancer(config).pin(organization_id, default_actor(), reason)
    console.print(f"organization {organization_id} pinned", highlight=False)


def unpin_command(organization_id: int = typer.Argument(..., help="The organization id."),
                  config: str | None = CONFIG_OPTION) -> None:
    """Let the rebalancer move an organization again."""
    removed = _rebalancer(config).unpin(organization_id, default_actor())
    console.print(f"organization {organization_id} " + ("unpinned" if removed else "was not pinned"),
                  highlight=False)


def pins_command(json_output: bool = JSON_OPTION, config: str | None = CONFIG_OPTION) -> None:
    """Pinned organizations."""
    pins = _rebalancer(config).store.pins()
    rows = [{"organization_id": p.organization_id, "pinned_by": p.pinned_by, "reason": p.reason,
             "pinned_at": p.pinned_at.isoformat() if p.pinned_at else None} for p in pins.values()]
    if json_output:
        print_json(rows)
        return
    t = Table("organization", "pinned by", "reason", "since")
    for r in rows:
        t.add_row(str(r["organization_id"]), r["pinned_by"], r["reason"], clock(r["pinned_at"]))
    console.print(t)


def register(app: typer.Typer) -> None:
    for name, func in (("pin", pin_command), ("unpin", unpin_command), ("pins", pins_command)):
        rebalance_app.command(name)(handle_errors(func))
    app.add_typer(rebalance_app, name="rebalance")
    # `migrator orgs pin|unpin|pins` and `migrator cells capacity`: the same commands in the groups
    # where an operator looks for them (those groups live in migrator.cli.cells).
    try:
        from migrator.cli.cells import cells_app, orgs_app
    except ImportError:  # pragma: no cover - cells commands missing: the rebalance group still works
        return
    for name, func in (("pin", pin_command), ("unpin", unpin_command), ("pins", pins_command)):
        orgs_app.command(name)(handle_errors(func))
    cells_app.command("capacity")(handle_errors(capacity_command))
