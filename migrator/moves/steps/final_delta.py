"""final_delta (online strategy): after freeze and drain, apply the rest of the change log.

The organization is read-only, so the log's head is final: after this round the target holds every
change; verify then compares checksums.
"""

from __future__ import annotations

from migrator.cells import capture as cap
from migrator.moves.change_log import apply_round, capture_id
from migrator.moves.steps.base import Step


def run(ctx) -> None:
    move = ctx.store.get(ctx.move.id)
    head = cap.log_head(ctx.source(), capture_id(move))
    keys = apply_round(ctx, head).keys if head > move.capture_applied else 0
    ctx.store.merge_json(move.id, ctx.token, "report", {"final_delta_keys": keys})


STEP = Step("final_delta", run=run, summary="apply the last logged changes, inside the write window (online)")
