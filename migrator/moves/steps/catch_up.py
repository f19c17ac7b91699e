"""catch_up (online strategy): apply the change log to the target in rounds until what is left is small.

"Small" is ``online.max_delta_keys`` keys and about ``online.max_delta_s`` seconds at the rate the
rounds measured: no write downtime is paid while the delta is still large.
"""

from __future__ import annotations

import time

from migrator.moves.change_log import apply_round, pending
from migrator.moves.steps.base import Step, pace


def run(ctx) -> None:
    cfg = ctx.settings.online
    last_note = time.monotonic()
    rounds = 0
    while True:
        move = ctx.store.get(ctx.move.id)
        left = pending(ctx)
        rate = move.catch_up_keys_per_s or cfg.assumed_keys_per_s
        estimate = left / rate if rate else 0.0
        if left <= cfg.max_delta_keys and estimate <= cfg.max_delta_s and move.capture_snapshot is not None:
            ctx.store.merge_json(move.id, ctx.token, "report", {
                "catch_up_switch": {"pending_keys": left, "estimated_final_s": round(estimate, 3)}})
            ctx.event("catch_up", "converged", f"{left} key(s) left (about {estimate:.2f}s to apply) after "
                      f"{rounds} round(s): freezing for the final delta")
            return
        done = apply_round(ctx)
        rounds += 1
        ctx.heartbeat()
        pace(ctx, done.keys)
        if time.monotonic() - last_note > 30:
            ctx.event("catch_up", "lagging", f"round {rounds}: {left} key(s) pending, {done.keys} applied in "
                      f"{done.seconds:.3f}s; not freezing yet", {"pending": left})
            last_note = time.monotonic()
        if left <= cfg.max_delta_keys:
            time.sleep(cfg.poll_s)


STEP = Step("catch_up", run=run, summary="apply logged changes until the delta is small (online)")
