"""flip: the route changes cells exactly once, and the target accepts the organization's writes.

One compare-and-set in the Topology Service (expected version, the move's token); running it again
after it succeeded returns the same route and writes no second history row. Right after it the
freeze is lifted on the target and in the route (the source copy stays frozen until cleanup, so
there are never two writable copies, and a write a stale router sends to the source is refused,
never lost). That closes the write window (``migrator/moves/window.py``): writes are refused from
the freeze until here, and no longer.
"""

from __future__ import annotations

from sqlalchemy import func

from migrator.cells import capture as cap
from migrator.moves import recovery, window
from migrator.moves.change_log import after_flip_capture_id
from migrator.moves.steps.base import Step
from migrator.observability import metrics


def run(ctx) -> None:
    move = ctx.store.get(ctx.move.id)
    route = ctx.topology.flip(ctx.org, move.source_cell, move.target_cell, expected_version=move.route_version,
                              token=ctx.token, actor=f"move {move.id}", reason=move.reason or "move")
    # route_version stays the version the flip expected (so a second flip is recognised as done).
    if move.flipped_at is None:
        move = ctx.store.set_fields(move.id, ctx.token, flipped_at=func.now()) or ctx.store.get(move.id)
    if ctx.settings.moves.verify_after_flip:
        # Before the target takes writes: log them, so verify_after_flip can leave the keys they change out.
        cap.start_capture(ctx.target(), ctx.org, after_flip_capture_id(move), str(move.id))
    recovery.lift_freeze(ctx.settings, move, ctx.token, cells=(move.target_cell,), reason="move flipped",
                         topology=ctx.topology, cell_conn=ctx.cell_conn)
    if move.unfrozen_at is None:
        move = ctx.store.set_fields(move.id, ctx.token, unfrozen_at=func.now()) or ctx.store.get(move.id)
    report: dict = {"route_version_after_flip": route.version}
    seconds = window.seconds(move)
    if seconds is not None and "write_window_s" not in (move.report or {}):
        metrics.write_window.observe(seconds)
        report["write_window_s"] = round(seconds, 3)
    ctx.store.merge_json(move.id, ctx.token, "report", report)


STEP = Step("flip", run=run, summary="one compare-and-set of the route, source -> target; target writable")
