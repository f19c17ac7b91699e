"""catch_up (online strategy): apply the change log to the target in rounds until what is left is small.

"Small" is ``online.max_delta_keys`` keys and about ``online.max_delta_s`` seconds at the rate the
rounds measured: no write downtime is paid while the delta is still large.
"""

from __future__ import annotations

import time

from migrator.cells import capture as cap
from migrator.moves.change_log import apply_round, capture_id
from migrator.moves.steps.base import Step


def run(ctx) -> None:
    cfg = ctx.settings.online
    src = ctx.source()
    last_note = time.monotonic()
    rounds = 0
    while True:
        move = ctx.store.get(ctx.move.id)
        head = cap.log_head(src, capture_id(move))
        pending = cap.pending_keys(src, capture_id(move), move.capture_applied, head)
        rate = move.catch_up_keys_per_s or cfg.assumed_keys_per_s
        estimate = pending / rate if rate else 0.0
        if pending <= cfg.max_delta_keys and estimate <= cfg.max_delta_s:
            ctx.store.merge_json(move.id, ctx.token, "report", {
                "catch_up_switch": {"pending_keys": pending, "estimated_final_s": round(estimate, 3)}})
            ctx.event("catch_up", "converged", f"{pending} key(s) left (about {estimate:.2f}s to apply) after "
                      f"{rounds} round(s): freezing for the final delta")
            return
        done = apply_round(ctx, head)
        rounds += 1
        ctx.heartbeat()
        if time.monotonic() - last_note > 30:
            ctx.event("catch_up", "lagging", f"round {rounds}: {pending} key(s) pending, {done.keys} applied in "
                      f"{done.seconds:.3f}s; not freezing yet", {"pending": pending})
            last_note = time.monotonic()
        if pending <= cfg.max_delta_keys:
            time.sleep(cfg.poll_s)


STEP = Step("catch_up", run=run, summary="apply logged changes until the delta is small (online)")
