"""unfreeze: the organization is writable on the target.

The capture of an online move ends, the guard is lifted in the target and the route's freeze is
released (migrator/moves/recovery.py). The source copy stays frozen (read-only) until cleanup, so
there are never two writable copies.
"""

from __future__ import annotations

from sqlalchemy import func

from migrator.moves import change_log, recovery
from migrator.moves.steps.base import Step
from migrator.observability import metrics


def run(ctx) -> None:
    move = ctx.store.get(ctx.move.id)
    change_log.stop(ctx.settings, move)
    recovery.lift_freeze(ctx.settings, move, ctx.token, cells=(move.target_cell,), reason="move completed",
                         topology=ctx.topology, cell_conn=ctx.cell_conn)
    if move.unfrozen_at is None:
        ctx.store.set_fields(move.id, ctx.token, unfrozen_at=func.now())
    move = ctx.store.get(ctx.move.id)
    if move.frozen_at and move.unfrozen_at:
        window = (move.unfrozen_at - move.frozen_at).total_seconds()
        if "write_window_s" not in (move.report or {}):
            metrics.write_window.observe(window)
        ctx.store.merge_json(move.id, ctx.token, "report", {"write_window_s": round(window, 3)})


STEP = Step("unfreeze", run=run, summary="writable on the target; the source copy stays read-only")
