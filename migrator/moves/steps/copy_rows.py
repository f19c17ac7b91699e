"""copy_rows: the organization's rows, one unit per key range of a table (docs/adr/0004-copy-path.md).

Large tables are split into ranges of at most ``moves.chunk_rows`` rows so several workers copy
them at once; each unit copies its range batch by batch and checkpoints after each batch.
"""

from __future__ import annotations

import time

from migrator.copy.rows import copy_range, plan_ranges
from migrator.moves.steps.base import ROWS, Step, batch_rows, pace, stream_pace
from migrator.observability import metrics


def plan(ctx) -> list[dict]:
    src = ctx.source()
    units = []
    for ordinal, table in enumerate(ctx.copy_order()):
        for r in plan_ranges(src, ctx.specs[table], ctx.org, ctx.settings.moves.chunk_rows):
            units.append({**r, "ordinal": ordinal})
    return units


def unit(ctx, unit) -> dict:
    spec = ctx.specs[unit.table_name]
    m = ctx.settings.moves

    def checkpoint(last_key, rows, nbytes):
        ctx.store.checkpoint_unit(ctx.move.id, "copy_rows", unit.unit, ctx.token, ctx.owner, position=last_key,
                                  done_delta=rows, bytes_delta=nbytes, ttl_s=ctx.ttl_s)
        metrics.rows_copied.labels(unit.table_name).inc(rows)
        metrics.bytes_copied.inc(nbytes)
        pace(ctx, rows, nbytes)

    started = time.monotonic()
    copied = copy_range(ctx.source(), ctx.target(), spec, ctx.org, lo=unit.lo, hi=unit.hi, position=unit.position,
                        batch_rows=batch_rows(ctx, m.batch_rows), checkpoint=checkpoint,
                        disable_triggers=m.disable_target_triggers, token=ctx.token, on_chunk=stream_pace(ctx))
    # seconds: this unit's busy time, how migrator/moves/calibration.py shares the step's time among tables
    return {"rows_this_attempt": copied, "seconds": round(time.monotonic() - started, 4)}


def fan_in(ctx) -> None:
    units = ctx.store.units(ctx.move.id, "copy_rows")
    started = ctx.move.step_started_at  # the step's first claim: the copy's rate for progress and its ETA
    seconds = (ctx.store.now() - started).total_seconds() if started is not None else None
    ctx.store.merge_json(ctx.move.id, ctx.token, "report", {
        "copy_rows": {"rows": sum(u.done for u in units), "bytes": sum(u.bytes_done for u in units),
                      "units": len(units), "seconds": None if seconds is None else round(seconds, 3)}})


STEP = Step("copy_rows", plan=plan, unit=unit, fan_in=fan_in, unit_queue=ROWS,
            summary="the organization's rows, key range by key range, in parallel")
