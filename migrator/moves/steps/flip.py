"""flip: the route changes cells exactly once.

One compare-and-set in the Topology Service (expected version, the move's token); running it again
after it succeeded returns the same route and writes no second history row.
"""

from __future__ import annotations

from sqlalchemy import func

from migrator.moves.steps.base import Step


def run(ctx) -> None:
    move = ctx.store.get(ctx.move.id)
    route = ctx.topology.flip(ctx.org, move.source_cell, move.target_cell, expected_version=move.route_version,
                              token=ctx.token, actor=f"move {move.id}", reason=move.reason or "move")
    # route_version stays the version the flip expected (so a second flip is recognised as done).
    if move.flipped_at is None:
        ctx.store.set_fields(move.id, ctx.token, flipped_at=func.now())
    ctx.store.merge_json(move.id, ctx.token, "report", {"route_version_after_flip": route.version})


STEP = Step("flip", run=run, summary="one compare-and-set of the route, source -> target")
