"""A move's live progress on a terminal (rich progress bars on stderr): ``migrator watch``, ``move --wait``,
``resume --wait``, ``abort``, ``cleanup`` and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from migrator.moves import workflow as wf
from migrator.moves.operations import Operations
from migrator.moves.views import progress, throttle

err_console = Console(stderr=True, soft_wrap=True)

MOVING = (wf.QUEUED, wf.RUNNING, wf.ABORTING)


def duration(seconds: float | None) -> str:
    """``12 s``, ``3 min 05 s``, ``2 h 01 min``; ``?`` when not known."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def rate_line(p: dict) -> str:
    """``12,345 rows/s, ETA 31 s`` from a move's progress; empty while neither is known."""
    parts = []
    if p.get("rows_per_s"):
        parts.append(f"{p['rows_per_s']:,.0f} rows/s")
    if p.get("eta_s") is not None and p["fraction"] < 1:
        parts.append(f"ETA {duration(p['eta_s'])}")
    return ", ".join(parts)


def throttle_line(throttled: dict) -> str:
    """``paused: replication lag 12 s on cell-1 (limit 5 s), for 40 s``."""
    since = throttled.get("since_s")
    return throttled["text"] + (f", for {duration(since)}" if since is not None else "")


def removal_line(removal: dict) -> str:
    """``aborted: removed 1,234 rows from cell-2`` (or what an abort or a cleanup removed so far)."""
    what = {"abort": "aborted" if removal["done"] else "aborting",
            "cleanup": "cleaned up" if removal["done"] else "cleaning up"}[removal["what"]]
    return f"{what}: removed {removal['rows']:,} rows from {removal['cell']}"


def watch_move(ops: Operations, move_id: str, *, interval: float = 0.5, quiet: bool = False,
               until: Callable | None = None, timeout: float | None = None) -> object:
    """Live progress until the move stops moving (or ``until(move)`` holds, or ``timeout`` seconds passed);
    returns the final move.

    One bar for the whole move (its work, weighed per step, with the copy's rows/s and the ETA), one per
    table's rows and one for blobs; once an abort or a cleanup runs, one for what it removed instead."""
    store = ops.store
    move = store.get(move_id)
    done = until or (lambda m: m.state not in MOVING)
    deadline = None if timeout is None else time.monotonic() + timeout
    # The rate and the ETA go on a line of their own under the move's bar: a column of them would take the
    # width of every table's bar at 80 columns.
    columns = (TextColumn("{task.description}", justify="left"), BarColumn(),
               TextColumn("{task.fields[count]}", justify="right"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False, disable=quiet) as bar:
        move_task = bar.add_task("move", total=1000, count="")
        table_tasks: dict[str, int] = {}
        blob_task = None
        removal_task = None
        while True:
            move = store.get(move.id)
            p = progress(store, move)
            removal = p["removal"]
            aborting = removal is not None and removal["what"] == "abort"  # the fraction is the abort's
            description = f"[yellow]abort[/] at {move.step} ({move.state})" if aborting \
                else f"step [cyan]{move.step}[/] ({move.state})"
            rate = "" if aborting else rate_line(p)
            held = throttle(move)
            if held and not aborting:
                rate = (rate + "\n  " if rate else "") + f"[yellow]throttled[/] {throttle_line(held)}"
            bar.update(move_task, completed=round(p["fraction"] * 1000), count=f"{p['fraction'] * 100:.0f}%",
                       description=description + (f"\n  {rate}" if rate else ""))
            if removal is None:
                for name, t in p["tables"].items():
                    if name not in table_tasks:
                        table_tasks[name] = bar.add_task(f"  rows {name}", total=max(t["total"], 1), count="")
                    copied = min(t["copied"], t["total"]) if t["total"] else 0
                    bar.update(table_tasks[name], completed=copied, total=max(t["total"], 1),
                               count=f"{copied:,}/{t['total']:,}")
                if p["blobs_total"]:
                    if blob_task is None:
                        blob_task = bar.add_task("  blobs", total=p["blobs_total"], count="")
                    blobs = min(p["blobs_copied"], p["blobs_total"])
                    bar.update(blob_task, completed=blobs, count=f"{blobs:,}/{p['blobs_total']:,}")
            else:  # the copy is being taken back (abort) or the source copy deleted (cleanup): not "0/N copied"
                for task in [*table_tasks.values(), *([blob_task] if blob_task is not None else [])]:
                    bar.update(task, visible=False)
                if removal_task is None:
                    removal_task = bar.add_task("", total=max(removal["tables_total"], 1), count="")
                bar.update(removal_task, description=f"  {removal_line(removal)}",
                           completed=removal["tables_total"] if removal["done"] else removal["tables_done"],
                           total=max(removal["tables_total"], 1),
                           count=f"{removal['tables_done']}/{removal['tables_total']} tables")
            if done(move) or (deadline is not None and time.monotonic() > deadline):
                return move
            time.sleep(interval)
