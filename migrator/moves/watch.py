"""A move's live progress on a terminal (rich progress bars on stderr): ``migrator watch``, ``move --wait``,
``resume --wait``, ``abort`` and the demo."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from migrator.moves import workflow as wf
from migrator.moves.operations import Operations
from migrator.moves.views import progress

err_console = Console(stderr=True, soft_wrap=True)


def watch_move(ops: Operations, move_id: str, *, interval: float = 0.5, quiet: bool = False) -> object:
    """Live progress until the move stops moving; returns the final move."""
    store = ops.store
    move = store.get(move_id)
    columns = (TextColumn("{task.description}", justify="left"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False, disable=quiet) as bar:
        steps = wf.steps_for(move.strategy)
        step_task = bar.add_task("step", total=len(steps))
        table_tasks: dict[str, int] = {}
        blob_task = None
        while True:
            move = store.get(move.id)
            p = progress(store, move)
            idx = len(steps) if move.state in (wf.COMPLETED, wf.CLEANED) else (
                steps.index(move.step) if move.step in steps else 0)
            bar.update(step_task, completed=idx, description=f"step [cyan]{move.step}[/] ({move.state})")
            for name, t in p["tables"].items():
                if name not in table_tasks:
                    table_tasks[name] = bar.add_task(f"  rows {name}", total=max(t["total"], 1))
                bar.update(table_tasks[name], completed=min(t["copied"], t["total"]) if t["total"] else 0,
                           total=max(t["total"], 1) if t["total"] else 1)
            if p["blobs_total"]:
                if blob_task is None:
                    blob_task = bar.add_task("  blobs", total=p["blobs_total"])
                bar.update(blob_task, completed=min(p["blobs_copied"], p["blobs_total"]))
            if move.state not in (wf.QUEUED, wf.RUNNING, wf.ABORTING):
                return move
            time.sleep(interval)
