"""final_delta (online strategy): after freeze and drain, apply the rest of the change log.

The organization is read-only and drained, so every change is committed and in this round's snapshot:
after it the target holds every change; verification then compares checksums.
"""

from __future__ import annotations

from migrator.moves.change_log import apply_round
from migrator.moves.steps.base import Step


def run(ctx) -> None:
    keys = apply_round(ctx).keys
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {"final_delta_keys": keys})


STEP = Step("final_delta", run=run, summary="apply the last logged changes, inside the write window (online)")
