"""flip and unfreeze: the route changes cells exactly once, then the target accepts writes.

flip is one compare-and-set in the Topology Service (expected version, the move's token); running
it again after it succeeded returns the same route and writes no second history row. unfreeze lifts
the guard on the target and the route's freeze; the source copy stays frozen (read-only) until
cleanup, so there are never two writable copies.
"""

from __future__ import annotations

from sqlalchemy import func

from migrator.moves import online
from migrator.observability import metrics


def flip(ctx) -> None:
    move = ctx.store.get(ctx.move.id)
    route = ctx.topology.flip(ctx.org, move.source_cell, move.target_cell, expected_version=move.route_version,
                              token=ctx.token, actor=f"move {move.id}", reason=move.reason or "move")
    # route_version stays the version the flip expected (so a second flip is recognised as done).
    if move.flipped_at is None:
        ctx.store.set_fields(move.id, ctx.token, flipped_at=func.now())
    ctx.store.merge_json(move.id, ctx.token, "report", {"route_version_after_flip": route.version})


def unfreeze(ctx) -> None:
    from migrator.cells.guard import unfreeze_org

    move = ctx.store.get(ctx.move.id)
    online.stop(ctx.settings, move)  # the online strategy's change capture ends with the move
    unfreeze_org(ctx.target(), ctx.org)
    ctx.topology.unfreeze(ctx.org, ctx.token, actor=f"move {move.id}", reason="move completed")
    if move.unfrozen_at is None:
        ctx.store.set_fields(move.id, ctx.token, unfrozen_at=func.now())
    move = ctx.store.get(ctx.move.id)
    if move.frozen_at and move.unfrozen_at:
        window = (move.unfrozen_at - move.frozen_at).total_seconds()
        if "write_window_s" not in (move.report or {}):
            metrics.write_window.observe(window)
        ctx.store.merge_json(move.id, ctx.token, "report", {"write_window_s": round(window, 3)})
