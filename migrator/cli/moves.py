"""Operator commands for moves: move, status, watch, pause, resume, abort, cleanup, reconcile.

Commands import the modules they drive when they run, not at import: `migrator --help` and the fast
paths (`topology classify`) stay quick, and a command needs only its own dependencies.
"""

from __future__ import annotations

import typer
from rich.markup import escape

from migrator.cli.common import CONFIG_OPTION, JSON_OPTION, console, err_console, handle_errors, print_json, settings
from migrator.cli.render import WIDE_OPTION, ago, clock, id_prefixes, key_column, list_table, short_column, text_column
from migrator.moves import workflow as wf
from migrator.moves.operations import Operations
from migrator.moves.views import move_detail, move_summary, progress
from migrator.moves.watch import rate_line, removal_line, throttle_line, watch_move


def _ops(config) -> Operations:
    return Operations(settings(config))


def _print_plan(plan: dict, title: str | None = None) -> None:
    if title is None:
        console.print(f"plan: organization {plan['organization_id']} {plan['source']} -> {plan['target']}")
    table = list_table(title)
    short_column(table, "table")
    key_column(table, "rows", justify="right")
    for name, rows in plan["tables"].items():
        table.add_row(name, f"{rows:,}")
    table.add_row("[bold]total", f"[bold]{plan['rows_total']:,}")
    console.print(table)
    console.print(f"blobs: {plan['blobs']:,} ({plan['blob_bytes']:,} bytes)")
    if "write_window_estimate_s" in plan:
        console.print(f"strategy {plan['strategy']}: estimated duration {plan['estimate_s']:.1f} s, "
                      f"write window {plan['write_window_estimate_s']:.1f} s")
    else:  # a plan recorded before the estimate knew the strategy
        console.print(f"estimated duration: {plan['estimate_s']:.1f} s")
    cal = plan.get("calibration")
    if cal:
        console.print(f"estimate {cal['basis']}", soft_wrap=True)
    for line in plan.get("advice") or []:
        console.print(f"[yellow]advice:[/] {escape(line)}", soft_wrap=True)
    unique = plan.get("unique_checks")
    if unique:
        console.print(f"unique keys: {unique['checked']} checked in the target, no conflict")
        for skip in unique["skipped"]:
            console.print(f"[yellow]unique key not checked:[/] {escape(skip['table'])}.{escape(skip['index'])}: "
                          f"{escape(skip['reason'])}", soft_wrap=True)


def _print_detail(data: dict, wide: bool = False) -> None:
    console.print(f"[bold]move {data['id']}[/]  strategy {data['strategy']}")
    console.print(f"organization {data['organization_id']}  {data['source']} -> {data['target']}  "
                  f"created {clock(data['created_at'])}")
    colour = {"completed": "green", "failed": "red", "rejected": "red", "aborted": "yellow"}.get(data["state"], "cyan")
    p = data["progress"]
    removal = p.get("removal")
    if removal and removal["what"] == "abort":  # the copy was taken back: its rows are not "0/N copied"
        console.print(f"state [{colour}]{data['state']}[/]  step {data['step']}  attempt {data['attempt']}")
    else:
        console.print(f"state [{colour}]{data['state']}[/]  step {data['step']}  attempt {data['attempt']}  "
                      f"progress {p['fraction'] * 100:.0f}%")
        if rate_line(p):
            console.print(f"copy {rate_line(p)}")
    if removal:
        console.print(_removed(removal))
    if data.get("error"):
        console.print(f"[red]error:[/] {data['error']}")
    if data.get("throttled"):
        console.print(f"[yellow]throttled[/] {throttle_line(data['throttled'])}")
    console.print(f"requested by {data['requested_by']}: {data['reason']}")
    if data.get("plan"):
        _print_plan(data["plan"], title="plan")
    ver = (data.get("report") or {}).get("verification")
    if ver:
        t = list_table("verification")
        short_column(t, "table")
        for col in ("source rows", "target rows"):
            key_column(t, col, justify="right")
        if wide:
            for col in ("source checksum", "target checksum"):
                key_column(t, col)
        key_column(t, "ok")
        for name, v in ver["tables"].items():
            sums = [v["source_checksum"], v["target_checksum"]] if wide else []
            t.add_row(name, f"{v['source_rows']:,}", f"{v['target_rows']:,}", *sums, "yes" if v["match"] else "[red]NO")
        console.print(t)
        console.print(f"blobs verified: {ver.get('blobs_verified', 0)}")
    report = data.get("report") or {}
    if data.get("write_window_s") is not None:
        state = "open, writes refused" if data.get("write_window_open") else "frozen -> writable on the target" \
            if data.get("flipped_at") else "frozen -> freeze lifted, source writable"
        line = f"write window: {data['write_window_s']:.2f} s ({state})"
        if "unfreeze_done_s" in report:
            line += f"; unfreeze step done {report['unfreeze_done_s']:.2f} s after the freeze"
        console.print(line)
    h = list_table("history")
    key_column(h, "at")
    short_column(h, "step")
    short_column(h, "event")
    if wide:
        short_column(h, "actor")
    text_column(h, "message", ratio=1)
    for e in data["history"]:
        h.add_row(clock(e["at"]), e["step"] or "", e["event"], *([e["actor"]] if wide else []), escape(e["message"]))
    console.print(h)


DONE = (wf.COMPLETED, wf.CLEANED)


def _removed(removal: dict) -> str:
    """``aborted: removed 1,234 rows from cell-2`` and, on a line of its own, ``  notes 1,000, issues 234``:
    what an abort or a cleanup removed, in total and per table (tables it removed nothing from left out)."""
    tables = ", ".join(f"{t} {n:,}" for t, n in removal["tables"].items() if n)
    return removal_line(removal) + (f"\n  {tables}" if tables else "")


def _print_list(rows: list[dict], wide: bool) -> None:
    """The move list: at 80 columns one line per move, ids a prefix that `migrator status` takes; --wide
    adds the strategy, attempt, age, who asked and the error."""
    t = list_table(f"{len(rows)} move(s)")
    key_column(t, "id")
    key_column(t, "org", justify="right")
    short_column(t, "route")
    short_column(t, "state")
    short_column(t, "step")  # where an active or failed move is; blank once it completed
    key_column(t, "done", justify="right")
    key_column(t, "created")
    if wide:
        for col in ("strategy", "attempt", "age", "requested by"):
            short_column(t, col)
        text_column(t, "error", ratio=1)
    prefixes = id_prefixes([s["id"] for s in rows])
    for s in rows:
        extra = [s["strategy"], str(s["attempt"]), ago(s["age_s"]), s["requested_by"] or "",
                 escape(s["error"] or "")] if wide else []
        t.add_row(prefixes[s["id"]] if not wide else s["id"], str(s["organization_id"]),
                  f"{s['source']}→{s['target']}", s["state"],
                  "" if s["state"] in DONE else s["step"] + (" (throttled)" if s.get("throttled") else ""),
                  "" if s["state"] == wf.ABORTED else f"{s['progress'] * 100:.0f}%",
                  clock(s["created_at"]), *extra)
    console.print(t)
    failed = sum(1 for s in rows if s["error"])
    if failed and not wide:
        console.print(f"{failed} with an error: `migrator status ID` or --wide shows it")


def _finish(ops: Operations, move_id: str, as_json: bool) -> None:
    move = ops.store.get(move_id)
    data = move_detail(ops.store, move)
    if as_json:
        print_json(data)
    else:
        _print_detail(data)
    if move.state != wf.COMPLETED:
        err_console.print(f"[red]move {move.id} ended {move.state}[/]: {move.error or 'see history above'}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    @app.command("move")
    @handle_errors
    def move_cmd(
        org: int = typer.Option(..., "--org", help="Organization id to move."),
        to: str = typer.Option(..., "--to", help="Target cell name."),
        reason: str = typer.Option("", "--reason", help="Why (kept in the move's history)."),
        wait: bool = typer.Option(False, "--wait", help="Show live progress; exit 0 only if the move completed."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Run preflight only and print the plan."),
        strategy: str = typer.Option(
            None, "--strategy",
            help="online: copy while writable, freeze only for the last delta; frozen: freeze, then copy. "
                 "Default: moves.default_strategy (online)."),
        force: bool = typer.Option(False, "--force", help="Start it even past the concurrency guardrails "
                                                          "(rebalance.max_moves_per_cell, max_moves_total); "
                                                          "needs --reason, kept in the move's history."),
        as_json: bool = JSON_OPTION,
        config: str = CONFIG_OPTION,
    ):
        """Move an organization to another cell (records the move and enqueues it).

        Refused (exit 1, guardrail_exceeded) while the source, the target or the fleet already has as
        many active moves as the guardrails allow, unless --force with --reason."""
        ops = _ops(config)
        if strategy is not None and strategy not in wf.STRATEGIES:
            raise typer.BadParameter(f"unknown strategy {strategy!r}; available: {', '.join(wf.STRATEGIES)}",
                                     param_hint="--strategy")
        if dry_run:
            plan = ops.dry_run(org, to, strategy)
            print_json(plan) if as_json else _print_plan(plan)
            return
        if force and not reason.strip():
            raise typer.BadParameter("--force needs --reason (kept in the move's history)", param_hint="--reason")
        move = ops.request_move(org, to, reason=reason, strategy=strategy, force=force)
        if not wait:
            if as_json:
                print_json(move_summary(ops.store, move))
            else:
                console.print(f"move {move.id} enqueued: organization {org} {move.source_cell} -> {to}")
                console.print(f"follow it with: migrator watch {move.id}")
            return
        if not as_json:
            console.print(f"move {move.id}: organization {org} {move.source_cell} -> {to}")
        watch_move(ops, str(move.id), quiet=as_json)
        _finish(ops, str(move.id), as_json)

    @app.command("status")
    @handle_errors
    def status_cmd(
        move_id: str = typer.Argument(None, help="A move id (omit to list moves)."),
        state: list[str] = typer.Option(None, "--state", help="Only moves in this state (repeatable)."),
        cell: str = typer.Option(None, "--cell", help="Only moves from or to this cell."),
        org: int = typer.Option(None, "--org", help="Only moves of this organization."),
        wide: bool = WIDE_OPTION,
        as_json: bool = JSON_OPTION,
        config: str = CONFIG_OPTION,
    ):
        """One move in detail (plan, progress, verification, history), or the list of moves."""
        ops = _ops(config)
        if move_id:
            data = move_detail(ops.store, ops.store.get(move_id))
            print_json(data) if as_json else _print_detail(data, wide)
            return
        moves = ops.store.list(states=state or None, cell=cell, organization_id=org)
        rows = []
        for m in moves:
            s = move_summary(ops.store, m)
            s["progress"] = progress(ops.store, m)["fraction"]
            rows.append(s)
        if as_json:
            print_json(rows)
            return
        _print_list(rows, wide)

    @app.command("watch")
    @handle_errors
    def watch_cmd(move_id: str = typer.Argument(..., help="The move id."), as_json: bool = JSON_OPTION,
                  config: str = CONFIG_OPTION):
        """Live progress of a move until it completes, fails or is aborted."""
        ops = _ops(config)
        watch_move(ops, move_id, quiet=as_json)
        _finish(ops, move_id, as_json)

    @app.command("pause")
    @handle_errors
    def pause_cmd(move_id: str = typer.Argument(..., help="The move id."), config: str = CONFIG_OPTION):
        """Pause a running move at its next checkpoint (a frozen organization stays frozen)."""
        move = _ops(config).pause(move_id)
        console.print(f"move {move.id} paused at step {move.step}; `migrator resume {move.id}` continues it")

    @app.command("resume")
    @handle_errors
    def resume_cmd(move_id: str = typer.Argument(..., help="The move id."),
                   wait: bool = typer.Option(False, "--wait", help="Show live progress until it ends."),
                   as_json: bool = JSON_OPTION, config: str = CONFIG_OPTION):
        """Resume a failed or paused move from its last checkpoint (a new attempt, fencing the old one)."""
        ops = _ops(config)
        move = ops.resume(move_id)
        if not as_json:
            console.print(f"move {move.id} resumed (attempt {move.attempt}) at step {move.step}")
        if wait:
            watch_move(ops, move_id, quiet=as_json)
            _finish(ops, move_id, as_json)
        elif as_json:
            print_json(move_summary(ops.store, move))

    @app.command("abort")
    @handle_errors
    def abort_cmd(move_id: str = typer.Argument(..., help="The move id."),
                  reason: str = typer.Option("", "--reason", help="Why (kept in the history)."),
                  wait: bool = typer.Option(True, "--wait/--no-wait",
                                            help="Wait until the abort is done, showing its progress."),
                  as_json: bool = JSON_OPTION, config: str = CONFIG_OPTION):
        """Abort a move before its flip: unfreeze the source and delete the partial target copy."""
        ops = _ops(config)
        move = ops.abort(move_id, reason=reason)
        if not as_json:
            console.print(f"move {move.id}: abort requested")
        if not wait:
            if as_json:
                print_json(move_summary(ops.store, move))
            return
        move = watch_move(ops, str(move.id), quiet=as_json)
        data = move_detail(ops.store, move)
        if as_json:
            print_json(data)
        if move.state != wf.ABORTED:
            err_console.print(f"[red]move {move.id} is {move.state}, not aborted[/]: "
                              f"{move.error or 'see `migrator status ' + str(move.id) + '`'}")
            raise typer.Exit(1)
        if not as_json:
            removal = data["progress"]["removal"]
            console.print(f"move {move.id} aborted: source {move.source_cell!r} writable")
            if removal:
                console.print(_removed(removal))

    @app.command("cleanup")
    @handle_errors
    def cleanup_cmd(move_id: str = typer.Argument(..., help="The move id."),
                    force: bool = typer.Option(False, "--force", help="Delete before the retention period ends."),
                    wait: bool = typer.Option(True, "--wait/--no-wait",
                                              help="Wait until the source copy is gone, showing its progress."),
                    timeout: float = typer.Option(3600, "--timeout", help="Seconds to wait."),
                    accept_differences: str = typer.Option(
                        "", "--accept-differences", metavar="REASON",
                        help="Delete although the verification after the flip found differences (kept in the "
                             "history)."),
                    as_json: bool = JSON_OPTION, config: str = CONFIG_OPTION):
        """Delete the source copy of a completed move (refused before the retention period, and after a
        verification that found differences)."""
        ops = _ops(config)
        move = ops.cleanup(move_id, force=force, accept_differences=accept_differences or None)
        if not as_json:
            console.print(f"move {move.id}: cleanup of {move.source_cell!r} enqueued")
        if not wait:
            if as_json:
                print_json(move_summary(ops.store, move))
            return
        move = watch_move(ops, str(move.id), quiet=as_json, until=lambda m: m.state == wf.CLEANED, timeout=timeout)
        data = move_detail(ops.store, move)
        if as_json:
            print_json(data)
        if move.state != wf.CLEANED:
            err_console.print("cleanup still running; check `migrator status`")
            raise typer.Exit(1)
        if not as_json:
            removal = data["progress"]["removal"]
            console.print(f"move {move.id}: source copy deleted")
            if removal:
                console.print(_removed(removal))

    @app.command("reconcile")
    @handle_errors
    def reconcile_cmd(as_json: bool = JSON_OPTION, config: str = CONFIG_OPTION):
        """Re-enqueue moves with no progress (what celery beat runs periodically)."""
        from migrator.moves.dispatch import Dispatcher
        from migrator.moves.reconciler import reconcile

        cfg = settings(config)
        actions = reconcile(cfg, Dispatcher(cfg))
        print_json(actions) if as_json else console.print(f"{len(actions)} move(s) re-enqueued")
