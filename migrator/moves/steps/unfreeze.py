"""unfreeze: the move's last step, after the flip.

The target has accepted writes since the flip (which lifted its freeze and closed the write window,
``migrator/moves/window.py``). This step ends the online strategy's change capture and makes sure
the target's freeze is gone (idempotent: a move flipped by an abort that found the route already
flipped arrives here with the target still frozen). The source copy stays frozen (read-only) until
cleanup, so there are never two writable copies.
"""

from __future__ import annotations

from sqlalchemy import func

from migrator.moves import change_log, recovery
from migrator.moves.steps.base import Step


def run(ctx) -> None:
    move = ctx.store.get(ctx.move.id)
    change_log.stop(ctx.settings, move)
    recovery.lift_freeze(ctx.settings, move, ctx.token, cells=(move.target_cell,), reason="move completed",
                         topology=ctx.topology, cell_conn=ctx.cell_conn)
    if move.unfrozen_at is None:
        move = ctx.store.set_fields(move.id, ctx.token, unfrozen_at=func.now()) or ctx.store.get(move.id)
    if move.frozen_at:
        ctx.store.merge_json(move.id, ctx.token, "report", {
            "unfreeze_done_s": round((ctx.store.now() - move.frozen_at).total_seconds(), 3)})


STEP = Step("unfreeze", run=run, summary="change capture ended; the source copy stays read-only until cleanup")
